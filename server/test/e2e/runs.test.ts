// The run API end to end: real server, real Python engine on the tiny model, real SQLite and disk.
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Validator } from '@seriousme/openapi-schema-validator';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { callbackReceiver, imageHost } from '../helpers/receivers.ts';
import { Api, startServer, waitFor, type ServerHandle } from '../helpers/server.ts';

// Real engine on 2 shared cores: runs can take tens of seconds when other suites load the machine.
vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

const KEY = 'e2e_runs_key';
const SECRET = 'callback_secret_for_tests';
let srv: ServerHandle;
let api: Api;
let host: Awaited<ReturnType<typeof imageHost>>;
let hooks: Awaited<ReturnType<typeof callbackReceiver>>;
let jpeg: Buffer;

const outputFiles = (dataDir: string) => {
  const root = path.join(dataDir, 'objects/outputs');
  return fs.existsSync(root) ? fs.readdirSync(root).flatMap((d) => fs.readdirSync(path.join(root, d)).map((f) => `${d}/${f}`)) : [];
};

async function fetchImageOut(url: string) {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  const bytes = Buffer.from(await res.arrayBuffer());
  return { res, bytes, meta: await sharp(bytes).metadata() };
}

beforeAll(async () => {
  jpeg = await testImage(128, 96, 'jpeg');
  host = await imageHost({ '/in.jpg': { bytes: jpeg, type: 'image/jpeg' } });
  hooks = await callbackReceiver(2);
  srv = await startServer({
    apiKeys: [KEY],
    args: ['--concurrency', '1'],
    env: {
      KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1',
      KLEINSERVE_CALLBACK_SECRET: SECRET,
      KLEINSERVE_CALLBACK_BASE_DELAY_MS: '100',
    },
  });
  api = new Api(srv.url, KEY);
});
afterAll(async () => {
  await srv?.dispose();
  await host?.close();
  await hooks?.close();
});

describe('runs end to end (real engine, tiny model)', () => {
  it('edits a URL image with Prefer: wait and serves a real JPEG of the reported size, with Range', async () => {
    const { status, body, headers } = await api.create(
      { input: { prompt: 'a watercolor', image_urls: [`http://127.0.0.1:${host.port}/in.jpg`], steps: 2, seed: 42 } },
      { prefer: 'wait' },
    );
    expect(status).toBe(200);
    expect(headers.get('preference-applied')).toBe('wait=60');
    expect(body.status_code).toBe('succeeded');
    expect(body.output.seed).toBe(42);
    for (const k of ['queue_ms', 'preprocess_ms', 'text_encode_ms', 'vae_encode_ms', 'denoise_ms', 'decode_ms', 'image_encode_ms']) {
      expect(typeof body.output.timing[k], k).toBe('number');
    }
    const out = body.output.outputs[0];
    expect(out.url.startsWith(`${srv.url}/v1/outputs/`)).toBe(true);
    const { res, bytes, meta } = await fetchImageOut(out.url);
    expect(res.headers.get('content-type')).toBe('image/jpeg');
    expect(res.headers.get('cache-control')).toContain('max-age');
    expect(res.headers.get('etag')).toBeTruthy();
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', out.width, out.height]);
    expect([out.width, out.height]).toEqual([128, 96]);

    const part = await fetch(out.url, { headers: { range: 'bytes=0-99' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 0-99/${bytes.length}`);
    expect(Buffer.from(await part.arrayBuffer())).toEqual(bytes.subarray(0, 100));
  });

  it('takes a data: URI and returns PNG at a requested size; polling reaches succeeded', async () => {
    const png = await testImage(96, 96, 'png');
    const { body } = await api.create({
      input: { prompt: 'sketch', image_urls: [dataUri(png, 'image/png')], steps: 1, output_format: 'png', width: 64, height: 80 },
    });
    expect(body.status_code).toBe('queued');
    // Read back as the stored copy's unguessable URL, never the bytes themselves.
    expect(body.input.image_urls[0]).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1\/inputs\/[0-9a-f-]{36}\/[0-9a-f]{32}\/0$/);
    const run = await api.waitTerminal(body.id);
    expect(run.status_code).toBe('succeeded');
    const out = run.output.outputs[0];
    expect(out).toMatchObject({ content_type: 'image/png', width: 64, height: 80 });
    const { meta } = await fetchImageOut(out.url);
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 64, 80]);
  });

  it('takes raw base64 (two references) and returns WebP', async () => {
    const { body } = await api.create(
      { input: { prompt: 'merge', image_urls: [jpeg.toString('base64'), (await testImage(80, 80, 'webp')).toString('base64')], steps: 1, output_format: 'webp' } },
      { prefer: 'wait=60' },
    );
    expect(body.status_code).toBe('succeeded');
    const out = body.output.outputs[0];
    const { meta } = await fetchImageOut(out.url);
    expect([meta.format, meta.width, meta.height]).toEqual(['webp', out.width, out.height]);
  });

  it('cancels a run in the queue and one while running; neither leaves output, and the engine keeps serving', async () => {
    const before = outputFiles(srv.dataDir).length;
    const img = dataUri(await testImage(256, 256));
    const slow = (await api.create({ input: { prompt: 'slow', image_urls: [img], steps: 50, width: 512, height: 512 } })).body;
    const queued = (await api.create({ input: { prompt: 'queued', image_urls: [img], steps: 1 } })).body;
    await waitFor(async () => (await api.get(slow.id)).status_code === 'running', 30_000, 'slow run running');

    // Prefer: wait=N answers with the run as it stands when N runs out.
    const t0 = Date.now();
    const waited = await api.create({ input: { prompt: 'behind', image_urls: [img], steps: 1 } }, { prefer: 'wait=1' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(900);
    expect(waited.body.status_code).toBe('queued');

    const q = await api.cancel(queued.id);
    expect(q.status).toBe(201);
    expect(q.body.status_code).toBe('canceled');
    const r = await api.cancel(slow.id);
    expect(r.status).toBe(201);
    const again = await api.cancel(slow.id);
    expect(again.status).toBe(200);
    expect(again.body.status_code).toBe('canceled');

    const after = await api.waitTerminal(waited.body.id);
    expect(after.status_code).toBe('succeeded');
    expect((await api.get(slow.id)).status_code).toBe('canceled');
    expect((await api.get(queued.id)).started_at).toBeNull();
    expect(outputFiles(srv.dataDir).length).toBe(before + 1);
  });

  it('delivers signed callbacks, retrying a failing receiver, for success and failure', async () => {
    const ok = (await api.create({ input: { prompt: 'cb', image_urls: [jpeg.toString('base64')], steps: 1 }, callback_url: hooks.url(), metadata: { order: 7 } }, { prefer: 'wait' })).body;
    const bad = (await api.create({ input: { prompt: 'cb', image_urls: [`http://127.0.0.1:${host.port}/missing.jpg`], steps: 1 }, callback_url: hooks.url() }, { prefer: 'wait' })).body;
    expect(ok.status_code).toBe('succeeded');
    expect(bad).toMatchObject({ status_code: 'failed', failure_code: 'IMAGE_FETCH_FAILED', failure_stage_code: 'preprocess' });
    expect(bad.failure_message).toContain('input.image_urls[0]');

    await waitFor(() => hooks.received.filter((r) => r.status === 200).length >= 2, 20_000, 'both callbacks delivered');
    for (const run of [ok, bad]) {
      const deliveries = hooks.received.filter((r) => r.body.run_id === run.id);
      expect(deliveries.map((d) => d.status)).toEqual([500, 500, 200]);
      for (const d of deliveries) {
        expect(d.headers['runflow-signature']).toBe(createHmac('sha256', SECRET).update(d.raw).digest('hex'));
      }
      expect(new Set(deliveries.map((d) => d.raw)).size).toBe(1);
    }
    const okBody = hooks.received.find((r) => r.body.run_id === ok.id)!.body;
    expect(okBody).toMatchObject({ event: 'run.completed', status: 'succeeded', metadata: { order: 7 } });
    expect(okBody.output.outputs[0].url).toBe(ok.output.outputs[0].url);
    const badBody = hooks.received.find((r) => r.body.run_id === bad.id)!.body;
    expect(badBody).toMatchObject({ event: 'run.failed', status: 'failed' });
  });

  it('lists runs with a status filter and pq pages', async () => {
    const all = await (await fetch(`${srv.url}/v1/runs?limit=100`, { headers: api.headers() })).json();
    const canceled = await (await fetch(`${srv.url}/v1/runs?status=canceled`, { headers: api.headers() })).json();
    expect(canceled.items.map((r: any) => r.status_code)).toEqual(['canceled', 'canceled']);
    const page1 = await (await fetch(`${srv.url}/v1/runs?limit=3`, { headers: api.headers() })).json();
    const page2 = await (await fetch(`${srv.url}/v1/runs?limit=3&pq=${page1.next_pq}`, { headers: api.headers() })).json();
    expect([...page1.items, ...page2.items].map((r: any) => r.id)).toEqual(all.items.slice(0, 6).map((r: any) => r.id));
  });

  it('serves an /openapi.json that validates, and metrics', async () => {
    const spec = await (await fetch(`${srv.url}/openapi.json`)).json();
    const result = await new Validator().validate(spec);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    expect(Object.keys(spec.paths)).toEqual(expect.arrayContaining(['/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs', '/v1/runs/{id}', '/v1/admin/runs/{id}/cancellation', '/v1/health']));
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    expect(metrics).toMatch(/kleinserve_runs_completed_total\{status="succeeded"\} \d+/);
    expect(metrics).toContain('kleinserve_stage_seconds_bucket');
    expect(metrics).toContain('kleinserve_engine_state{state="ready"} 1');
  });
});
