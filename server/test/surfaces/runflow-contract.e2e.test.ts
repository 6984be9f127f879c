// The Runflow contract, driven the way Runflow's SDK and docs drive it, against the REAL server + tiny engine:
// create through the model path (per-segment and whole-id encoded), poll, wait, cancel, list with `pq`,
// idempotency by header only, asset uploads then an edit, the flat legacy route, readiness and whoami,
// re-submittable input URLs, documented extra fields, metered cost, and callbacks with and without failure.
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callbackReceiver, imageHost } from '../helpers/receivers.ts';
import { dataUri, testImage } from '../helpers/images.ts';
import { startServer, waitFor, type ServerHandle } from '../helpers/server.ts';

const KEY = 'ks_test_contract';
const OTHER = 'ks_test_contract_other';
/** $ per GPU-hour; cost = engine GPU time x this. */
const PRICE = 7.2;
let server: ServerHandle;
let hooks: Awaited<ReturnType<typeof callbackReceiver>>;
/** Answers 404 to every image: a run whose input it hosts fails in preprocessing. */
let nowhere: Awaited<ReturnType<typeof imageHost>>;
let img: string;
let readinessBeforeReady: number;

const MODEL = 'black-forest-labs/flux-2-klein-4b/edit';
async function call(method: string, route: string, body?: unknown, extra: Record<string, string> = {}, key = KEY) {
  const headers = { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...extra };
  const res = await fetch(`${server.url}${route}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

/** Runflow SDK's models.run(): POST /v1/models/{each segment encoded}/runs. */
const run = (input: Record<string, unknown>, extra: Record<string, unknown> = {}, h: Record<string, string> = {}) =>
  call('POST', `/v1/models/${MODEL.split('/').map(encodeURIComponent).join('/')}/runs`, { input, ...extra }, h);

/** Runflow SDK's runs.wait(): poll GET /v1/runs/{id} until terminal. */
async function poll(id: string): Promise<any> {
  let last: any;
  await waitFor(async () => {
    last = (await call('GET', `/v1/runs/${encodeURIComponent(id)}`)).body;
    return ['succeeded', 'failed', 'canceled'].includes(last.status_code);
  }, 60_000, `run ${id}`);
  return last;
}

beforeAll(async () => {
  hooks = await callbackReceiver();
  nowhere = await imageHost({});
  server = await startServer({
    apiKeys: [KEY, OTHER],
    waitReady: false,
    env: { KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1', KLEINSERVE_PRICE_PER_GPU_HOUR: String(PRICE), KLEINSERVE_CALLBACK_BASE_DELAY_MS: '50' },
  });
  readinessBeforeReady = (await fetch(`${server.url}/v1/readiness`)).status;
  await waitFor(async () => (await server.health()).ok === true, 120_000, 'engine ready');
  img = dataUri(await testImage(96, 64));
});
afterAll(async () => {
  await server?.dispose();
  await hooks?.close();
  await nowhere?.close();
});

describe('create, poll, wait, cancel', () => {
  it('creates through the per-segment and whole-id encoded model paths, then polls to succeeded', async () => {
    const created = await run({ prompt: 'contract', image_urls: [img], steps: 1, seed: 5 });
    expect(created.status).toBe(200);
    expect(created.body.status_code).toBe('queued');
    const done = await poll(created.body.id);
    expect(done.status_code).toBe('succeeded');
    expect(done.output.outputs[0].url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1\/outputs\//);

    const whole = await call('POST', `/v1/models/${encodeURIComponent(MODEL)}/runs`, { input: { prompt: 'whole id', image_urls: [img], steps: 1 } }, { prefer: 'wait=30' });
    expect(whole.status).toBe(200);
    expect(whole.body.status_code).toBe('succeeded');
  });

  it('cancels a queued run with Runflow\'s cancellation route', async () => {
    const slow = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => run({ prompt: `busy ${i}`, image_urls: [img], steps: 20 })));
    const target = slow.at(-1)!.body.id;
    const canceled = await call('POST', `/v1/admin/runs/${target}/cancellation`);
    expect([200, 201]).toContain(canceled.status);
    expect((await poll(target)).status_code).toMatch(/canceled|succeeded/);
    for (const s of slow) await poll(s.body.id);
  });
});

describe('idempotency', () => {
  it('client_ref is the caller\'s reference: two concurrent creates with the same client_ref make two runs', async () => {
    const [a, b] = await Promise.all([1, 2].map(() => run({ prompt: 'tagged', image_urls: [img], steps: 1 }, { client_ref: 'customer-42' })));
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(a.body.id).not.toBe(b.body.id);
    expect(a.body.client_ref).toBe('customer-42');
  });

  it('the same Idempotency-Key with the same body returns the first run; with a different body 409 naming the key', async () => {
    const body = { prompt: 'idem', image_urls: [img], steps: 1, seed: 9 };
    const first = await run(body, {}, { 'idempotency-key': 'contract-key-1' });
    const again = await run(body, {}, { 'idempotency-key': 'contract-key-1' });
    expect(again.body.id).toBe(first.body.id);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    const changed = await run({ ...body, seed: 10 }, {}, { 'idempotency-key': 'contract-key-1' });
    expect(changed.status).toBe(409);
    expect(changed.body.code).toBe('IDEMPOTENCY_KEY_REUSED');
    expect(changed.body.errors).toEqual([{ field: 'header.idempotency-key', reason: expect.stringContaining('contract-key-1') }]);
    // Another API key has its own key space.
    const other = await call('POST', `/v1/models/${MODEL}/runs`, { input: { ...body, seed: 10 } }, { 'idempotency-key': 'contract-key-1' }, OTHER);
    expect(other.status).toBe(200);
    expect(other.body.id).not.toBe(first.body.id);
  });
});

describe('list', () => {
  it('answers {items, next_pq, prev_pq} and pages forward and back with pq', async () => {
    for (let i = 0; i < 3; i++) await run({ prompt: `page ${i}`, image_urls: [img], steps: 1 });
    const first = await call('GET', '/v1/runs?limit=2');
    expect(first.status).toBe(200);
    expect(Object.keys(first.body).sort()).toEqual(['items', 'next_pq', 'prev_pq']);
    expect(first.body.items).toHaveLength(2);
    expect(first.body.prev_pq).toBeNull();
    expect(typeof first.body.next_pq).toBe('string');
    const second = await call('GET', `/v1/runs?limit=2&pq=${encodeURIComponent(first.body.next_pq)}`);
    expect(second.body.items).toHaveLength(2);
    expect(second.body.items[0].id < first.body.items[1].id).toBe(true);
    const back = await call('GET', `/v1/runs?limit=2&pq=${encodeURIComponent(second.body.prev_pq)}`);
    expect(back.body.items.map((r: any) => r.id)).toEqual(first.body.items.map((r: any) => r.id));
    const succeeded = await call('GET', '/v1/runs?limit=500&status=succeeded');
    expect(succeeded.body.items.every((r: any) => r.status_code === 'succeeded')).toBe(true);
  });

  it('refuses limit over 500, a bad pq and an unknown query parameter with a 422 naming it', async () => {
    const big = await call('GET', '/v1/runs?limit=501');
    expect(big.status).toBe(422);
    expect(big.body.errors[0].field).toBe('query.limit');
    const unknown = await call('GET', '/v1/runs?limit=2&cursorr=x');
    expect(unknown.status).toBe(422);
    expect(unknown.body.errors).toEqual([{ field: 'query.cursorr', reason: 'unknown field' }]);
    const bad = await call('GET', '/v1/runs?pq=not-a-token');
    expect(bad.status).toBe(422);
    expect(bad.body.errors[0].field).toBe('query.pq');
  });
});

describe('callbacks', () => {
  it('run.completed carries the outputs; run.failed carries the error envelope in output; both send Runflow-Request-Id, recorded', async () => {
    const ok = await run({ prompt: 'cb ok', image_urls: [img], steps: 1 }, { callback_url: hooks.url('/ok') });
    const bad = await run({ prompt: 'cb fail', image_urls: [`http://127.0.0.1:${nowhere.port}/missing.jpg`], steps: 1 }, { callback_url: hooks.url('/fail') });
    await waitFor(() => hooks.received.filter((r) => r.body.run_id === ok.body.id || r.body.run_id === bad.body.id).length >= 2, 60_000, 'callbacks');
    const done = hooks.received.find((r) => r.body.run_id === ok.body.id)!;
    expect(done.body.event).toBe('run.completed');
    expect(done.body.output.outputs).toHaveLength(1);
    const failed = hooks.received.find((r) => r.body.run_id === bad.body.id)!;
    expect(failed.body.event).toBe('run.failed');
    expect(failed.body.output).toEqual({ error: expect.objectContaining({ code: 'IMAGE_FETCH_FAILED', message: expect.stringContaining('input.image_urls[0]') }) });
    expect(failed.body.output.error).toEqual(failed.body.error);
    expect(failed.body.error.code).toBe('IMAGE_FETCH_FAILED');
    for (const r of [done, failed]) expect(r.headers['runflow-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    const db = new Database(path.join(server.dataDir, 'runs.db'), { readonly: true });
    try {
      const rows = db.prepare('SELECT run_id, request_id FROM deliveries WHERE run_id IN (?, ?)').all(ok.body.id, bad.body.id) as { run_id: string; request_id: string }[];
      expect(rows.map((r) => r.request_id).sort()).toEqual([done, failed].map((r) => r.headers['runflow-request-id']).sort());
    } finally {
      db.close();
    }
  });
});

describe('asset uploads', () => {
  it('POST /v1/asset-uploads, PUT the bytes, confirm, then edit with the asset URL and its runflow:// ref', async () => {
    const bytes = await testImage(80, 64, 'png');
    const session = await call('POST', '/v1/asset-uploads', { filename: 'ref.png', mime_type: 'image/png', size_bytes: bytes.length });
    expect(session.status).toBe(201);
    expect(session.body.asset_id).toMatch(/^[0-9a-f-]{36}$/);
    // The SDK PUTs straight to the upload URL, without its API key.
    const put = await fetch(session.body.upload_url, { method: 'PUT', headers: { 'content-type': 'image/png' }, body: new Uint8Array(bytes) });
    expect(put.status).toBe(200);
    const asset = await call('POST', `/v1/asset-uploads/${session.body.asset_id}/confirmations`, { folder_id: null });
    expect(asset.status).toBe(201);
    expect(asset.body).toMatchObject({ id: session.body.asset_id, name: 'ref.png', mime_type: 'image/png', size_bytes: bytes.length });
    expect(Buffer.from(await (await fetch(asset.body.url)).arrayBuffer()).equals(bytes)).toBe(true);

    const byUrl = await run({ prompt: 'from asset', image_urls: [asset.body.url], steps: 1 }, {}, { prefer: 'wait=30' });
    expect(byUrl.body.status_code).toBe('succeeded');
    expect(byUrl.body.output.outputs[0]).toMatchObject({ width: 80, height: 64 });
    const byRef = await run({ prompt: 'from ref', image_urls: [`runflow://assets/${asset.body.id}`], steps: 1 }, {}, { prefer: 'wait=30' });
    expect(byRef.body.status_code).toBe('succeeded');
  });

  it('refuses a confirmation before the upload, an upload over the declared size, and an unknown asset ref', async () => {
    const session = await call('POST', '/v1/asset-uploads', { filename: 'x.png', mime_type: 'image/png', size_bytes: 10 });
    const early = await call('POST', `/v1/asset-uploads/${session.body.asset_id}/confirmations`, {});
    expect(early.status).toBe(409);
    const tooBig = await fetch(session.body.upload_url, { method: 'PUT', headers: { 'content-type': 'image/png' }, body: Buffer.alloc(11) });
    expect(tooBig.status).toBe(413);
    const unknown = await run({ prompt: 'x', image_urls: ['runflow://assets/00000000-0000-7000-8000-000000000000'], steps: 1 });
    expect(unknown.status).toBe(422);
    expect(unknown.body.errors[0]).toMatchObject({ field: 'input.image_urls[0]', reason: expect.stringContaining('not found') });
  });
});

describe('the flat legacy route and service routes', () => {
  it('POST /v1/run/{owner}/{model} takes the inputs as the body and answers images[0].url', async () => {
    const res = await call('POST', `/v1/run/black-forest-labs/flux-2-klein-4b/edit`, { prompt: 'legacy', image_urls: [img], steps: 1, seed: 3 });
    expect(res.status).toBe(200);
    expect(res.body.images[0].url).toMatch(/\/v1\/outputs\//);
    expect(res.body.seed).toBe(3);
    const t2i = await call('POST', `/v1/run/black-forest-labs/flux-2-klein-4b`, { prompt: 'legacy t2i', steps: 1, width: 64, height: 64 });
    expect(t2i.status).toBe(200);
    expect(t2i.body.images[0]).toMatchObject({ width: 64, height: 64 });
    const bad = await call('POST', `/v1/run/black-forest-labs/flux-2-klein-4b/edit`, { prompt: 'x', image_urls: [img], nope: 1 });
    expect(bad.status).toBe(422);
    expect(bad.body.errors).toEqual([{ field: 'nope', reason: 'unknown field' }]);
  });

  it('GET /v1/readiness answers 503 until the engine is ready, then 200; GET /v1/auth/me names the key without showing it', async () => {
    expect(readinessBeforeReady).toBe(503);
    const ready = await fetch(`${server.url}/v1/readiness`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ ready: true });
    const me = await call('GET', '/v1/auth/me');
    expect(me.status).toBe(200);
    expect(me.body).toMatchObject({ type: 'api_key', id: expect.stringMatching(/^key_[0-9a-f]{12}$/) });
    expect(JSON.stringify(me.body)).not.toContain(KEY);
    expect((await call('GET', '/v1/auth/me', undefined, {}, OTHER)).body.id).not.toBe(me.body.id);
    expect((await fetch(`${server.url}/v1/auth/me`)).status).toBe(401);
  });
});

describe('inputs and outputs of a run read back', () => {
  it('shows an unguessable URL for an inline input, which can be submitted again', async () => {
    const first = await run({ prompt: 'resubmit', image_urls: [img], steps: 1, seed: 1 }, {}, { prefer: 'wait=30' });
    const read = await call('GET', `/v1/runs/${first.body.id}`);
    const url: string = read.body.input.image_urls[0];
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1\/inputs\/[0-9a-f-]{36}\/[0-9a-f]{32}\/0$/);
    const stored = Buffer.from(await (await fetch(url)).arrayBuffer());
    expect(dataUri(stored)).toBe(img);
    expect((await fetch(url.replace(/\/[0-9a-f]{32}\//, `/${'0'.repeat(32)}/`))).status).toBe(404);
    const again = await run({ prompt: 'resubmit', image_urls: [url], steps: 1, seed: 1 }, {}, { prefer: 'wait=30' });
    expect(again.body.status_code).toBe('succeeded');
    const bytes = async (r: any) => Buffer.from(await (await fetch(r.output.outputs[0].url)).arrayBuffer());
    expect((await bytes(again.body)).equals(await bytes(first.body))).toBe(true);
  });

  it('accepts enable_safety_checker, disable_safety_checker and guidance_scale; unknown fields are still 422', async () => {
    // guidance_scale 1 is what the distilled klein 4B applies (a base checkpoint takes 1-20).
    const res = await run({ prompt: 'documented', image_urls: [img], steps: 1, enable_safety_checker: true, disable_safety_checker: false, guidance_scale: 1 }, {}, { prefer: 'wait=30' });
    expect(res.status).toBe(200);
    expect(res.body.status_code).toBe('succeeded');
    expect(res.body.input).toMatchObject({ guidance_scale: 1, enable_safety_checker: true });
    const unknown = await run({ prompt: 'x', image_urls: [img], guidance: 4 });
    expect(unknown.status).toBe(422);
    expect(unknown.body.errors).toEqual([{ field: 'input.guidance', reason: 'unknown field' }]);
  });

  it('meters cost as the run\'s GPU time x the configured price per GPU-hour', async () => {
    const res = await run({ prompt: 'metered', image_urls: [img], steps: 1 }, {}, { prefer: 'wait=30' });
    const { engine_total_ms, engine_queue_ms } = res.body.output.timing;
    const gpuMs = engine_total_ms - engine_queue_ms;
    expect(gpuMs).toBeGreaterThan(0);
    expect(res.body.cost).toBeCloseTo((gpuMs / 3_600_000) * PRICE, 10);
  });
});
