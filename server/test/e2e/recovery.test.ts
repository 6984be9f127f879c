// Crash safety and auth with the real server and engine: kill -9 of the engine child, of the engine by
// hanging it (SIGSTOP past the deadline), and of the server itself; graceful SIGTERM; a generated key on
// first start; an unloadable model. After each: no run lost, none completed twice (outputs on disk and
// terminal rows counted).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, startServer, tmpDir, waitFor, type ServerHandle } from '../helpers/server.ts';

// Real engine on 2 shared cores: runs can take tens of seconds when other suites load the machine.
vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

const ENV = { KLEINSERVE_ENGINE_DEADLINE_MS: '8000', KLEINSERVE_CONCURRENCY: '2' };
let dataDir: string;
let srv: ServerHandle;
let api: Api;
let key: string;
let img: string;
const allIds: string[] = [];

/** Alive and not a zombie: a killed process lingers as a zombie until its parent (or init) reaps it. */
function alive(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

function outputsOf(id: string): string[] {
  const dir = path.join(dataDir, 'objects/outputs', id);
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => !f.endsWith('.tmp')) : [];
}

async function submit(n: number, steps = 3): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const { status, body } = await api.create({ input: { prompt: `run ${allIds.length + i}`, image_urls: [img], steps, width: 192, height: 192 } });
    expect(status).toBe(200);
    ids.push(body.id);
  }
  allIds.push(...ids);
  return ids;
}

async function expectExactlyOnce(ids: string[]) {
  for (const id of ids) {
    const run = await api.waitTerminal(id, 120_000);
    expect(run.status_code, `${id}: ${run.failure_message}`).toBe('succeeded');
    expect(outputsOf(id), id).toHaveLength(1);
    expect(run.output.outputs[0].url.endsWith(outputsOf(id)[0])).toBe(true);
  }
}

beforeAll(async () => {
  dataDir = tmpDir('ks-recovery-');
  img = dataUri(await testImage(128, 128));
  srv = await startServer({ dataDir, env: ENV });
  key = srv.generatedKey!;
  api = new Api(srv.url, key);
});
afterAll(async () => {
  await srv?.dispose();
});

describe('auth, secure by default', () => {
  it('generates a key on first start, stores only its hash, and enforces it', async () => {
    expect(key).toMatch(/^ks_live_[A-Za-z0-9]+$/);
    const stored = fs.readFileSync(path.join(dataDir, 'api-keys.json'), 'utf8');
    expect(stored).not.toContain(key);
    expect(JSON.parse(stored).sha256).toHaveLength(1);
    const none = await fetch(`${srv.url}/v1/runs`);
    expect(none.status).toBe(401);
    expect(await none.json()).toMatchObject({ code: 'UNAUTHORIZED' });
    const wrong = await fetch(`${srv.url}/v1/runs`, { headers: { authorization: 'Bearer ks_live_wrong' } });
    expect(wrong.status).toBe(401);
    const post = await fetch(`${srv.url}/v1/models/flux-2-klein-4b/edit/runs`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(post.status).toBe(401);
    const ok = await fetch(`${srv.url}/v1/runs`, { headers: { authorization: `Bearer ${key}` } });
    expect(ok.status).toBe(200);
    expect(srv.stdout.some((l) => l.includes('"host":"127.0.0.1"'))).toBe(true);
  });
});

describe('crashes lose nothing and double nothing', () => {
  it('survives kill -9 of the engine child mid-run', async () => {
    const ids = await submit(4);
    await waitFor(async () => (await api.get(ids[0])).status_code === 'running', 60_000, 'a run running');
    const before = (await srv.health()).engine;
    process.kill(before.pid, 'SIGKILL');
    await expectExactlyOnce(ids);
    const after = (await srv.health()).engine;
    expect(after.restarts).toBeGreaterThan(before.restarts);
    expect(after.pid).not.toBe(before.pid);
  });

  it('treats an engine that hangs past the deadline as dead: kill -9, restart, retry', async () => {
    const ids = await submit(2);
    await waitFor(async () => (await api.get(ids[0])).status_code === 'running', 60_000, 'a run running');
    const before = (await srv.health()).engine;
    process.kill(before.pid, 'SIGSTOP');
    await expectExactlyOnce(ids);
    const after = (await srv.health()).engine;
    expect(after.pid).not.toBe(before.pid);
    await waitFor(() => !alive(before.pid), 10_000, 'hung engine gone');
  });

  it('survives kill -9 of the server: queued and running runs complete exactly once after restart', async () => {
    const ids = await submit(4);
    await waitFor(async () => (await api.get(ids[0])).status_code === 'running', 60_000, 'a run running');
    const oldEngine = (await srv.health()).engine.pid;
    await srv.kill9();
    // The engine sees its stdin pipe close and exits by itself: no orphan holds the GPU until the next start.
    await waitFor(() => !alive(oldEngine), 15_000, 'orphaned engine gone');
    srv = await startServer({ dataDir, env: ENV });
    expect(srv.generatedKey).toBeNull();
    api = new Api(srv.url, key);
    await expectExactlyOnce(ids);
  });

  it('shuts down gracefully on SIGTERM and finishes the rest after restart', async () => {
    const ids = await submit(3, 2);
    await waitFor(async () => (await api.get(ids[0])).status_code === 'running', 60_000, 'a run running');
    srv.proc.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => (srv.proc.exitCode !== null ? r(srv.proc.exitCode) : srv.proc.once('exit', (c) => r(c))));
    expect(code).toBe(0);
    srv = await startServer({ dataDir, env: ENV });
    api = new Api(srv.url, key);
    await expectExactlyOnce(ids);
  });

  it('ends with every run terminal once: rows and files agree', async () => {
    const list = await (await fetch(`${srv.url}/v1/runs?limit=100`, { headers: api.headers() })).json();
    expect(list.items.map((r: any) => r.id).sort()).toEqual([...allIds].sort());
    expect(list.items.every((r: any) => r.status_code === 'succeeded')).toBe(true);
    const dirs = fs.readdirSync(path.join(dataDir, 'objects/outputs'));
    expect(dirs.sort()).toEqual([...allIds].sort());
    for (const id of allIds) expect(outputsOf(id)).toHaveLength(1);
  });
});

describe('an unloadable model', () => {
  it('reports 503 MODEL_UNAVAILABLE and does not restart the engine', async () => {
    const bad = await startServer({ apiKeys: ['k_bad'], waitReady: false, args: ['--model', path.join(tmpDir('ks-nomodel-'), 'missing')] });
    try {
      await waitFor(async () => (await bad.health()).engine.status === 'unavailable', 60_000, 'engine unavailable');
      const res = await fetch(`${bad.url}/v1/health`);
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ ok: false, status: 'unavailable', engine: { restarts: 0 } });
      const create = await new Api(bad.url, 'k_bad').create({ input: { prompt: 'x', image_urls: [img] } });
      expect(create.status).toBe(503);
      expect(create.body.code).toBe('MODEL_UNAVAILABLE');
    } finally {
      await bad.dispose();
    }
  });
});
