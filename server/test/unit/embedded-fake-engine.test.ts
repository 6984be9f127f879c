// The embedded role wired in-process against a protocol-speaking FAKE engine: fast checks of routing,
// lifecycle, dispatch and retry logic. The real engine is covered by test/e2e.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { createEmbedded } from '../../src/roles/serve.ts';
import { FakeEngine, FakeEngineAdapter } from '../helpers/fake-engine.ts';
import { dataUri, testImage } from '../helpers/images.ts';

const KEY = 'test_key_1';
let node: Awaited<ReturnType<typeof createEmbedded>>;
let base: string;
let dataDir: string;
const inputFiles = () => {
  const root = path.join(dataDir, 'objects/inputs');
  return fs.existsSync(root) ? fs.readdirSync(root, { recursive: true }).filter((f) => /\/\d+$/.test(String(f))).length : 0;
};
let fake: FakeEngine;
let crashOnce = new Set<string>();
const logLines: any[] = [];
const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };

async function post(body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs`, {
    method: 'POST',
    headers: { ...auth, ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as any };
}

async function waitUntil(check: () => Promise<boolean>, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-unit-'));
  fake = new FakeEngine({
    stepMs: 5,
    behaviour: (h) => {
      const p = h.prompt as string;
      if (p.startsWith('slow')) return undefined;
      if (p.startsWith('crash') && !crashOnce.has(p)) {
        crashOnce.add(p);
        return 'crash';
      }
      if (p === 'always crash') return 'crash';
      if (p === 'oom') return 'OUT_OF_MEMORY';
      return undefined;
    },
  });
  const cfg = loadConfig({ port: '0', data: dataDir, 'api-key': [KEY] }, { KLEINSERVE_MAX_ATTEMPTS: '3' });
  const sink = { write: (line: string) => void logLines.push(JSON.parse(line)) };
  node = await createEmbedded(cfg, { engine: new FakeEngineAdapter(fake), logger: pino({ level: 'info' }, sink) });
  base = (await node.start()).url;
});
afterAll(async () => {
  await node?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
  fs.rmSync(path.dirname(fake.socketPath), { recursive: true, force: true });
});

describe('embedded role against a fake engine', () => {
  it('runs an edit with Prefer: wait and serves the output', async () => {
    const img = await testImage(128, 96);
    const { status, body } = await post({ input: { prompt: 'make it pink', image_urls: [dataUri(img)], seed: 5 } }, { prefer: 'wait=10' });
    expect(status).toBe(200);
    expect(body.status_code).toBe('succeeded');
    expect(body.model_id).toBe('black-forest-labs/flux-2-klein-4b/edit');
    expect(body.input.image_urls[0]).toBe(`${base}/v1/inputs/${body.id}/${body.output.outputs[0].url.match(/\/([0-9a-f]{32})\.jpg$/)[1]}/0`);
    expect(body.output.seed).toBe(5);
    expect(body.output.nsfw_detected).toBe(false);
    expect(body.output.timing.denoise_ms).toBeGreaterThan(0);
    expect(body.output.timing.queue_ms).toBeGreaterThanOrEqual(0);
    const out = body.output.outputs[0];
    expect(out).toMatchObject({ type: 'image', content_type: 'image/jpeg', width: 128, height: 96 });
    const file = await fetch(out.url);
    expect(file.status).toBe(200);
    const meta = await sharp(Buffer.from(await file.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 128, 96]);
  });

  it('answers a plain POST at once in queued, and polling reaches succeeded', async () => {
    const { body } = await post({ input: { prompt: 'slow one', image_urls: [dataUri(await testImage())], steps: 20 } });
    expect(body.status_code).toBe('queued');
    expect(body.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/);
    let run = body;
    for (let i = 0; i < 100 && run.status_code !== 'succeeded'; i++) {
      await new Promise((r) => setTimeout(r, 50));
      run = await (await fetch(`${base}/v1/runs/${body.id}`, { headers: auth })).json();
    }
    expect(run.status_code).toBe('succeeded');
    expect(run.started_at).not.toBeNull();
  });

  it('requeues a run whose engine connection dies, and it then succeeds once', async () => {
    const { body } = await post({ input: { prompt: 'crash then work', image_urls: [dataUri(await testImage())] } }, { prefer: 'wait=10' });
    expect(body.status_code).toBe('succeeded');
    expect(fake.requests.filter((r) => r.prompt === 'crash then work')).toHaveLength(2);
  });

  it('fails a run that keeps killing the engine after bounded attempts', async () => {
    const { body } = await post({ input: { prompt: 'always crash', image_urls: [dataUri(await testImage())] } }, { prefer: 'wait=10' });
    expect(body.status_code).toBe('failed');
    expect(body.failure_code).toBe('ENGINE_CRASHED');
    expect(body.error.code).toBe('ENGINE_CRASHED');
    expect(fake.requests.filter((r) => r.prompt === 'always crash')).toHaveLength(3);
  });

  it('maps an engine error to a failed run with a stage', async () => {
    const { body } = await post({ input: { prompt: 'oom', image_urls: [dataUri(await testImage())] } }, { prefer: 'wait=10' });
    expect(body).toMatchObject({ status_code: 'failed', failure_code: 'OUT_OF_MEMORY', failure_stage_code: 'inference' });
  });

  it('fails (never strands) a run whose engine answer carries no image data', async () => {
    const { body } = await post({ input: { prompt: 'no image data', image_urls: [dataUri(await testImage())] } }, { prefer: 'wait=10' });
    expect(body).toMatchObject({ status_code: 'failed', failure_code: 'ENGINE_ERROR', failure_stage_code: 'inference' });
  });

  it('cancels a running run (201) and then reports 200', async () => {
    const { body } = await post({ input: { prompt: 'slow cancel me', image_urls: [dataUri(await testImage())], steps: 50 } });
    await new Promise((r) => setTimeout(r, 60));
    const c1 = await fetch(`${base}/v1/admin/runs/${body.id}/cancellation`, { method: 'POST', headers: { authorization: auth.authorization } });
    expect(c1.status).toBe(201);
    expect((await c1.json()).status_code).toBe('canceled');
    const c2 = await fetch(`${base}/v1/runs/${body.id}/cancel`, { method: 'POST', headers: { authorization: auth.authorization } });
    expect(c2.status).toBe(200);
    await new Promise((r) => setTimeout(r, 300));
    const run = await (await fetch(`${base}/v1/runs/${body.id}`, { headers: auth })).json();
    expect(run.status_code).toBe('canceled');
    expect(run.output).toBeNull();
  });

  it('drops the decoded inline images of runs canceled while still queued', async () => {
    const img = dataUri(await testImage());
    const busy = await Promise.all([1, 2, 3, 4].map((i) => post({ input: { prompt: `slow busy ${i}`, image_urls: [img], steps: 50 } })));
    const queued = await Promise.all([1, 2, 3].map((i) => post({ input: { prompt: `slow queued ${i}`, image_urls: [img], steps: 50 } })));
    const cancel = (id: string) => fetch(`${base}/v1/admin/runs/${id}/cancellation`, { method: 'POST', headers: { authorization: auth.authorization } });
    await Promise.all(queued.map((q) => cancel(q.body.id)));
    const never = await Promise.all(queued.map(async (q) => (await fetch(`${base}/v1/runs/${q.body.id}`, { headers: auth })).json()));
    // At least one was canceled before the dispatcher ever took it: the path that used to keep its pixels.
    expect(never.some((r: any) => r.status_code === 'canceled' && r.started_at === null)).toBe(true);
    for (const b of busy) await waitUntil(async () => ['succeeded', 'failed', 'canceled'].includes((await (await fetch(`${base}/v1/runs/${b.body.id}`, { headers: auth })).json()).status_code));
    expect(node.dispatcher.held).toBe(0);
  });

  it('422s unknown input fields by name, and bad fields with their path', async () => {
    const r1 = await post({ input: { prompt: 'x', image_urls: [dataUri(await testImage())], bogus: 1, colour: 'red' } });
    expect(r1.status).toBe(422);
    expect(r1.body.code).toBe('INPUT_VALIDATION_FAILED');
    expect(r1.body.errors.map((e: any) => e.field).sort()).toEqual(['input.bogus', 'input.colour']);
    const before = inputFiles();
    expect(before).toBeGreaterThan(0);
    const r2 = await post({ input: { prompt: 'x', image_urls: [dataUri(await testImage()), 'not base64 at all!'] } });
    expect(r2.status).toBe(422);
    expect(r2.body.errors[0].field).toBe('input.image_urls[1]');
    const r4 = await post({ input: { prompt: 'x', image_urls: [dataUri(await testImage()), dataUri(Buffer.from('GIF89a not really'), 'image/gif')] } });
    expect(r4.status).toBe(422);
    expect(r4.body.errors.map((e: any) => e.field)).toEqual(['input.image_urls[1]']);
    expect(inputFiles()).toBe(before); // the accepted first image of a refused request is not kept
    const r3 = await post({ input: { prompt: 'x', image_urls: [dataUri(await testImage())], steps: 0, width: 512 } });
    expect(r3.body.errors.map((e: any) => e.field).sort()).toEqual(['input.height', 'input.steps']);
  });

  it('401s without or with a wrong key', async () => {
    const r = await fetch(`${base}/v1/runs`);
    expect(r.status).toBe(401);
    expect((await r.json()).code).toBe('UNAUTHORIZED');
    const w = await fetch(`${base}/v1/runs`, { headers: { authorization: 'Bearer nope' } });
    expect(w.status).toBe(401);
  });

  it('lists runs newest first with a page token and a status filter', async () => {
    const p1 = await (await fetch(`${base}/v1/runs?limit=2`, { headers: auth })).json();
    expect(p1.items).toHaveLength(2);
    expect(p1.next_pq).toEqual(expect.any(String));
    const p2 = await (await fetch(`${base}/v1/runs?limit=2&pq=${p1.next_pq}`, { headers: auth })).json();
    expect(p2.items[0].id < p1.items[1].id).toBe(true);
    const failed = await (await fetch(`${base}/v1/runs?status=failed`, { headers: auth })).json();
    expect(failed.items.length).toBeGreaterThanOrEqual(2);
    expect(failed.items.every((r: any) => r.status_code === 'failed')).toBe(true);
    const bad = await fetch(`${base}/v1/runs?status=done`, { headers: auth });
    expect(bad.status).toBe(422);
  });

  it('accepts the SDK route forms and 404s unknown runs', async () => {
    const enc = encodeURIComponent('black-forest-labs/flux-2-klein-4b/edit');
    const res = await fetch(`${base}/v1/models/${enc}/runs`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ input: { prompt: 'x', image_urls: [dataUri(await testImage())] } }),
    });
    expect(res.status).toBe(200);
    const alias = await fetch(`${base}/v1/models/flux-2-klein-4b/edit/runs`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ input: { prompt: 'x', image_urls: [dataUri(await testImage())] } }),
    });
    expect(alias.status).toBe(200);
    const missing = await fetch(`${base}/v1/runs/0190d1c5-0000-7000-8000-000000000000`, { headers: auth });
    expect(missing.status).toBe(404);
    expect((await missing.json()).code).toBe('RUN_NOT_FOUND');
  });

  it('logs JSON lines carrying the request id and the run id', async () => {
    const { body } = await post({ input: { prompt: 'logged', image_urls: [dataUri(await testImage())] } }, { prefer: 'wait=10', 'x-request-id': 'req-abc-123' });
    expect(body.status_code).toBe('succeeded');
    expect(logLines.some((l) => l.request_id === 'req-abc-123' && l.run_id === body.id && l.msg === 'run created')).toBe(true);
    expect(logLines.some((l) => l.run_id === body.id && l.msg === 'run succeeded')).toBe(true);
    expect(JSON.stringify(logLines)).not.toContain(KEY);
  });

  it('reports health with both status and ok', async () => {
    const h = await (await fetch(`${base}/v1/health`)).json();
    expect(h).toMatchObject({ status: 'ok', ok: true });
    const m = await (await fetch(`${base}/metrics`)).text();
    expect(m).toContain('kleinserve_runs{status="succeeded"}');
    expect(m).toContain('kleinserve_engine_fake 1');
  });
});
