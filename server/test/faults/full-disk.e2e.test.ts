// The real `kleinserve serve` and the tiny engine on two tiny tmpfs volumes: the data directory (the run
// database) and, mounted inside it, the object store. Each is filled to the last byte during intake,
// during the output write and during the final status write. Every time: the process stays up and
// answers, the request gets a contract error naming what could not be stored within seconds, health says
// storage is not writable, no run is left non-terminal, and once space is freed everything works again
// (held run states are recorded, orphaned files are swept) without a restart.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { imageHost } from '../helpers/receivers.ts';
import { Api, startServer, waitFor, type ServerHandle } from '../helpers/server.ts';
import { mountTinyVolume, type TinyVolume } from './tmpfs.ts';

const KEY = 'fault_key_1';
const MiB = 1024 * 1024;

const data = mountTinyVolume(24 * MiB);
const objects = typeof data === 'string' ? data : mountTinyVolume(24 * MiB, path.join(data.dir, 'objects'));
const skip = typeof data === 'string' ? data : typeof objects === 'string' ? objects : null;
if (skip) console.warn(`skipping full-disk e2e tests: ${skip}`);

describe.skipIf(skip)('a full disk under the real server', () => {
  const db = data as TinyVolume;
  const obj = objects as TinyVolume;
  let server: ServerHandle;
  let api: Api;
  let host: Awaited<ReturnType<typeof imageHost>>;
  let small: Buffer;

  beforeAll(async () => {
    small = await testImage(96, 64);
    host = await imageHost({ '/big.png': { bytes: await testImage(512, 512, 'png'), type: 'image/png' } });
    server = await startServer({
      dataDir: db.dir,
      apiKeys: [KEY],
      env: { KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1', KLEINSERVE_SWEEP_INTERVAL_MS: '500', KLEINSERVE_ORPHAN_GRACE_MS: '1000' },
    });
    api = new Api(server.url, KEY);
  });

  afterAll(async () => {
    obj.free();
    db.free();
    await server?.stop();
    await host?.close();
    obj.unmount();
    db.unmount();
  });

  const alive = async () => {
    expect(server.proc.exitCode).toBeNull();
    expect(server.proc.signalCode).toBeNull();
    const res = await fetch(`${server.url}/v1/health`);
    return { status: res.status, body: (await res.json()) as any };
  };
  const timed = async <T,>(fn: () => Promise<T>) => {
    const t0 = Date.now();
    const value = await fn();
    return { value, ms: Date.now() - t0 };
  };
  const tempFiles = () => (fs.readdirSync(obj.dir, { recursive: true }) as string[]).filter((f) => f.endsWith('.tmp'));
  const healthy = () => waitFor(async () => (await alive()).body.ok === true, 15_000, 'health ok again');

  it('intake: an inline image that cannot be stored is a 507 naming the field; nothing is left behind', async () => {
    obj.fill();
    const { value: res, ms } = await timed(() => api.create({ input: { prompt: 'p', image_urls: [dataUri(small)], steps: 1 } }));
    expect(res.status).toBe(507);
    expect(res.body).toMatchObject({ code: 'STORAGE_FULL', errors: [{ field: 'input.image_urls[0]', reason: 'storage is full' }] });
    expect(res.body.message).toMatch(/could not store input\.image_urls\[0\]: storage is full/);
    expect(ms).toBeLessThan(5000);
    expect(tempFiles()).toEqual([]);
    const health = await alive();
    expect(health.status).toBe(503);
    expect(health.body).toMatchObject({ status: 'degraded', ok: false, storage: { writable: false, objects: { writable: false } } });

    obj.free();
    const again = await api.create({ input: { prompt: 'p', image_urls: [dataUri(small)], steps: 1 } });
    expect(again.status).toBe(200);
    expect((await api.waitTerminal(again.body.id)).status_code).toBe('succeeded');
    await healthy();
  });

  it('output write: the run fails as STORAGE_FULL in bounded time, and the next one succeeds', async () => {
    obj.fill();
    const created = await api.create({ input: { prompt: 'p', image_urls: [`http://127.0.0.1:${host.port}/big.png`], steps: 1 } });
    expect(created.status).toBe(200);
    const { value: run, ms } = await timed(() => api.waitTerminal(created.body.id, 30_000));
    expect(run).toMatchObject({ status_code: 'failed', failure_code: 'STORAGE_FULL', failure_stage_code: 'postprocess' });
    expect(run.failure_message).toMatch(/could not store the output image: storage is full/);
    expect(ms).toBeLessThan(30_000);
    expect(tempFiles()).toEqual([]);
    await alive();

    obj.free();
    const next = await api.create({ input: { prompt: 'p', image_urls: [`http://127.0.0.1:${host.port}/big.png`], steps: 1 } });
    const done = await api.waitTerminal(next.body.id);
    expect(done.status_code).toBe('succeeded');
    expect((await fetch(done.output.outputs[0].url)).status).toBe(200);
    await healthy();
  });

  it('final status write: the run is held while the database is full and recorded once it is not', async () => {
    const created = await api.create({ input: { prompt: 'p', image_urls: [`http://127.0.0.1:${host.port}/big.png`], steps: 20 } });
    expect(created.status).toBe(200);
    const id = created.body.id;
    await waitFor(async () => (await api.get(id)).status_code === 'running', 30_000, 'run running');
    db.fill();
    // The engine finishes, the output is stored, and the final status write is refused and held.
    await waitFor(() => server.stderr.some((l) => l.includes(id) && l.includes('run state could not be recorded')), 30_000, 'final write refused');
    await new Promise((r) => setTimeout(r, 1500)); // a retry or two, still refused
    const held = await api.get(id);
    expect(['dispatching', 'running']).toContain(held.status_code);
    const health = await alive();
    expect(health.status).toBe(503);
    expect(health.body.storage.runs.writable).toBe(false);

    db.free();
    const { value: run, ms } = await timed(() => api.waitTerminal(id, 10_000));
    expect(ms).toBeLessThan(5000); // the retry loop runs every second; no restart
    expect(run.status_code).toBe('succeeded');
    expect((await fetch(run.output.outputs[0].url)).status).toBe(200);
    await healthy();
  }, 90_000);

  it('run record: a create the database cannot record is a 507; its stored input is swept as an orphan', async () => {
    db.fill();
    const res = await api.create({ input: { prompt: 'p', image_urls: [dataUri(small)], steps: 1 } });
    expect(res.status).toBe(507);
    expect(res.body).toMatchObject({ code: 'STORAGE_FULL', errors: [{ field: 'run record' }] });
    await alive();
    db.free();

    const inputs = path.join(obj.dir, 'inputs');
    const owned = async () => new Set(((await (await fetch(`${server.url}/v1/runs?limit=100`, { headers: api.headers() })).json()) as any).items.map((r: any) => r.id));
    const strays = async () => {
      const ids = await owned();
      return fs.readdirSync(inputs).filter((d) => !ids.has(d));
    };
    expect((await strays()).length).toBeGreaterThan(0); // the refused create's image
    await waitFor(async () => (await strays()).length === 0, 10_000, 'orphaned input swept');
  });

  it('leaves no run non-terminal and serves normally afterwards', async () => {
    const list = (await (await fetch(`${server.url}/v1/runs?limit=100`, { headers: api.headers() })).json()) as any;
    expect(list.items.length).toBeGreaterThanOrEqual(4);
    for (const r of list.items) expect(['succeeded', 'failed', 'canceled']).toContain(r.status_code);
    const res = await api.create({ input: { prompt: 'p', image_urls: [dataUri(small)], steps: 1 } }, { prefer: 'wait=30' });
    expect(res.body.status_code).toBe('succeeded');
    await healthy(); // the next write probe clears the last refusal
  });
});
