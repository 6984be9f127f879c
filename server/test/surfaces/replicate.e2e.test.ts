// Replicate's API against the REAL server + tiny engine, driven by the official `replicate` package with
// baseUrl http(s)://HOST/v1: replicate.run (a Buffer input through the Files API, file outputs read through
// the client), predictions.create/get/cancel/list, replicate.wait, Prefer: wait, the stream URL, webhooks
// filtered by event and accepted by the client's own validateWebhook, deterministic runs, Replicate-shaped errors, and the same
// runs read and canceled through Runflow's routes.
// The server runs behind a TLS-terminating proxy, as deployed: its public base URL is https, and the client's
// fetch reaches it on loopback (the client only wraps https: and data: outputs as FileOutput).
import http from 'node:http';
import Replicate, { validateWebhook } from 'replicate';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callbackReceiver } from '../helpers/receivers.ts';
import { testImage } from '../helpers/images.ts';
import { imagesBatchedWithOthers } from '../helpers/engine-metrics.ts';
import { startServer, waitFor, type ServerHandle } from '../helpers/server.ts';

const KEY = 'ks_test_replicate';
const PUBLIC = 'https://kleinserve.test';
const MODEL = 'black-forest-labs/flux-2-klein-4b';
let server: ServerHandle;
/** Where the server listens (its announced URL is the public one). */
let local: string;
let replicate: Replicate;
let png: Buffer;

/** The TLS terminator: the public https origin, served by the server on loopback. */
const viaProxy: typeof fetch = (input, init) => {
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
  return fetch(url.replace(PUBLIC, local), init);
};

beforeAll(async () => {
  server = await startServer({
    apiKeys: [KEY],
    env: { PUBLIC_BASE_URL: PUBLIC, KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1', KLEINSERVE_CALLBACK_BASE_DELAY_MS: '50' },
    waitReady: false,
  });
  local = `http://127.0.0.1:${server.port}`;
  await waitFor(async () => (await (await fetch(`${local}/v1/health`)).json()).ok === true, 120_000, 'engine ready');
  replicate = new Replicate({ auth: KEY, baseUrl: `${PUBLIC}/v1`, fetch: viaProxy });
  png = await testImage(96, 64, 'png');
}, 180_000);
afterAll(async () => server?.dispose());

const runflow = (path: string, init: RequestInit = {}) =>
  fetch(`${local}${path}`, { ...init, headers: { authorization: `Bearer ${KEY}`, ...(init.headers ?? {}) } });

describe('Replicate through the official client', () => {
  it('replicate.run: a Buffer input goes through the Files API; outputs are files the client reads', async () => {
    const output = (await replicate.run(MODEL, {
      input: { prompt: 'make it blue', images: [png], aspect_ratio: 'match_input_image', output_format: 'png', seed: 3 },
    })) as any[];
    expect(output).toHaveLength(1);
    expect(output[0].url().href).toMatch(new RegExp(`^${PUBLIC}/v1/outputs/`));
    const blob: Blob = await output[0].blob();
    expect(blob.type).toBe('image/png');
    const meta = await sharp(Buffer.from(await blob.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 96, 64]);
  });

  it('predictions.create / get / list, replicate.wait, and the same run through Runflow', async () => {
    const created = await replicate.predictions.create({ model: MODEL, input: { prompt: 'wait for it', images: [`data:image/png;base64,${png.toString('base64')}`], aspect_ratio: 'match_input_image' } });
    expect(created.status).toBe('starting');
    expect(created.urls.get).toBe(`${PUBLIC}/v1/predictions/${created.id}`);
    const done = await replicate.wait(created, { interval: 100 });
    expect(done.status).toBe('succeeded');
    expect(done.output[0]).toMatch(/\.jpg$/);
    expect((await replicate.predictions.get(created.id)).metrics?.predict_time).toBeGreaterThan(0);
    const run = await (await runflow(`/v1/runs/${created.id}`)).json();
    expect(run).toMatchObject({ status_code: 'succeeded', model_id: 'black-forest-labs/flux-2-klein-4b/edit' });
    const page = await replicate.predictions.list();
    expect(page.results.map((p: any) => p.id)).toContain(created.id);
    // By version, held with Prefer: wait.
    const held = await replicate.predictions.create({ version: '8e9c42d77b10a2a41af823ac4500f7545be6ebc4e745830fc3f3de10de200542', input: { prompt: 'held', aspect_ratio: '1:1', output_megapixels: 0.0625 }, wait: 30 });
    expect(held.status).toBe('succeeded');
    // The stream URL: the output, then done.
    // Opened as the client opens it: without the key (the URL is unguessable).
    const stream = await (await viaProxy(held.urls.stream!, { headers: { accept: 'text/event-stream' } })).text();
    expect(stream).toContain(`event: output\nid: ${held.id}\ndata: ${held.output[0]}`);
    expect(stream).toContain('event: done');
  });

  it('predictions.cancel, and Runflow cancel on a Replicate-made prediction', async () => {
    const a = await replicate.predictions.create({ model: MODEL, input: { prompt: 'cancel me', aspect_ratio: '1:1', output_megapixels: 0.25 } });
    const canceled = await replicate.predictions.cancel(a.id);
    expect(canceled.status).toBe('canceled');
    const b = await replicate.predictions.create({ model: MODEL, input: { prompt: 'cancel me too', aspect_ratio: '1:1', output_megapixels: 0.25 } });
    expect((await runflow(`/v1/admin/runs/${b.id}/cancellation`, { method: 'POST' })).status).toBe(201);
    expect((await replicate.predictions.get(b.id)).status).toBe('canceled');
  });

  it('webhooks: filtered by event, signed so the client\'s validateWebhook accepts them', async () => {
    const receiver = await callbackReceiver();
    try {
      const { key } = await replicate.webhooks.default.secret.get();
      expect(key).toMatch(/^whsec_/);
      const p = await replicate.predictions.create({
        model: MODEL,
        input: { prompt: 'hook', aspect_ratio: '1:1', output_megapixels: 0.0625 },
        webhook: receiver.url('/replicate'),
        webhook_events_filter: ['start', 'completed'],
      });
      await waitFor(() => receiver.received.some((r) => r.body.status === 'succeeded'), 60_000, 'completed webhook');
      expect(receiver.received.map((r) => r.body.status)).toEqual(['processing', 'succeeded']);
      // As a receiver hands the request to the client's validateWebhook.
      const asRequest = (r: (typeof receiver.received)[number], body = r.raw) =>
        new Request(receiver.url('/replicate'), { method: 'POST', headers: r.headers as Record<string, string>, body });
      for (const r of receiver.received) {
        expect(r.body.id).toBe(p.id);
        expect(await validateWebhook(asRequest(r), key)).toBe(true);
        expect(await validateWebhook(asRequest(r, r.raw.replace('hook', 'hooK')), key)).toBe(false);
      }
      expect(receiver.received[0].headers['webhook-id']).not.toBe(receiver.received[1].headers['webhook-id']);
    } finally {
      await receiver.close();
    }
  });

  it('deterministic: true gives the same bytes alone and with runs queued beside it; a non-boolean is refused naming it', async () => {
    const det = { prompt: 'same bytes', images: [`data:image/png;base64,${png.toString('base64')}`], aspect_ratio: 'match_input_image', output_format: 'png', seed: 21, deterministic: true };
    const bytesOf = async (input: Record<string, unknown>) => {
      const p = await replicate.predictions.create({ model: MODEL, input, wait: 60 });
      const done = p.status === 'succeeded' ? p : await replicate.wait(p, { interval: 100 });
      expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
      const res = await viaProxy(done.output[0]);
      expect(res.status).toBe(200);
      return { bytes: Buffer.from(await res.arrayBuffer()), prediction: done };
    };
    const alone = await bytesOf(det);
    const batchedBefore = await imagesBatchedWithOthers(local);
    // A larger run (1024x1024) keeps the engine busy, so that the same-shaped runs below queue behind it and reach its batcher together.
    const busy = await replicate.predictions.create({ model: MODEL, input: { prompt: 'keep busy', aspect_ratio: '1:1', seed: 7 } });
    await waitFor(async () => (await replicate.predictions.get(busy.id)).status === 'processing', 60_000, 'busy prediction processing');
    const [among] = await Promise.all([bytesOf(det), bytesOf({ ...det, deterministic: undefined, seed: 22 }), bytesOf({ ...det, deterministic: undefined, prompt: 'a neighbour' })]);
    expect((await replicate.wait(busy, { interval: 100 })).status).toBe('succeeded');
    expect((await imagesBatchedWithOthers(local)) - batchedBefore, 'the two neighbours batched, the deterministic run alone').toBe(2);
    expect(among.bytes.equals(alone.bytes), 'the same PNG bytes alone and among neighbours').toBe(true);
    expect((among.prediction.input as { deterministic?: boolean }).deterministic).toBe(true);
    const run = await (await runflow(`/v1/runs/${among.prediction.id}`)).json();
    expect(run.input.deterministic).toBe(true);

    const bad = await replicate.predictions.create({ model: MODEL, input: { ...det, images: undefined, aspect_ratio: '1:1', deterministic: 'yes' } }).catch((e) => e);
    expect(bad.response.status).toBe(422);
    const body = JSON.parse(bad.message.slice(bad.message.indexOf('{'), bad.message.lastIndexOf('}') + 1));
    expect(body.invalid_fields.map((f: any) => f.field)).toEqual(['input.deterministic']);
    const { components } = (await (await fetch(`${local}/openapi.json`)).json()) as any;
    expect(components.schemas.ReplicateInput.properties.deterministic).toMatchObject({ type: 'boolean', description: expect.stringContaining('byte-identical') });
  });

  it('errors take Replicate\'s shape, naming the field and the reason', async () => {
    const five = Array.from({ length: 5 }, () => `data:image/png;base64,${png.toString('base64')}`);
    const err = await replicate.predictions.create({ model: MODEL, input: { prompt: 'too many', images: five } }).catch((e) => e);
    expect(err.response.status).toBe(422);
    const body = JSON.parse(err.message.slice(err.message.indexOf('{'), err.message.lastIndexOf('}') + 1));
    expect(body).toMatchObject({ title: 'Input validation failed', status: 422 });
    expect(body.detail).toContain('input.images');
    expect(body.invalid_fields[0].field).toBe('input.images');

    const badUrl = await replicate.predictions.create({ model: MODEL, input: { prompt: 'x', images: ['not-an-image'] } }).catch((e) => e);
    expect(badUrl.response.status).toBe(422);
    expect(badUrl.message).toContain('input.images[0]');

    const anon = new Replicate({ auth: 'wrong_key', baseUrl: `${PUBLIC}/v1`, fetch: viaProxy });
    const unauth = await anon.predictions.get('x').catch((e) => e);
    expect(unauth.response.status).toBe(401);
    expect(unauth.message).toContain('"detail"');
  });
});

describe('Replicate Files API bounds', () => {
  it('a multipart upload over the body limit is a 413 once the limit is crossed, even when each file is under its own', async () => {
    // Two 45 MB files: each under the 50 MB file limit, together over the 80 MiB body limit, streamed chunked.
    const boundary = 'kleinserveFilesBoundary';
    const part = (name: string) => `--${boundary}\r\nContent-Disposition: form-data; name="content"; filename="${name}"\r\nContent-Type: image/png\r\n\r\n`;
    const chunk = Buffer.alloc(1024 * 1024, 0x5a);
    const res = await new Promise<{ status: number; body: any; sent: number }>((resolve, reject) => {
      let sent = 0;
      let answered = false;
      const req = http.request(
        { host: '127.0.0.1', port: server.port, method: 'POST', path: '/v1/files',
          headers: { authorization: `Bearer ${KEY}`, 'content-type': `multipart/form-data; boundary=${boundary}` } },
        (r) => {
          answered = true;
          const chunks: Buffer[] = [];
          r.on('data', (c) => chunks.push(c));
          r.on('end', () => resolve({ status: r.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()), sent }));
        },
      );
      req.on('error', () => setTimeout(() => answered || reject(new Error('no answer')), 3000));
      const parts: (Buffer | string)[] = [];
      for (const name of ['a.png', 'b.png']) {
        parts.push(part(name));
        for (let i = 0; i < 43; i++) parts.push(chunk);
        parts.push('\r\n');
      }
      parts.push(`--${boundary}--\r\n`);
      const pump = () => {
        while (parts.length && !answered && !req.destroyed) {
          const p = parts.shift()!;
          sent += Buffer.byteLength(p);
          if (!req.write(p)) return void req.once('drain', pump);
        }
        if (!answered && !req.destroyed) req.end();
      };
      pump();
    });
    expect(res.status).toBe(413);
    expect(res.body).toMatchObject({ status: 413, code: 'PAYLOAD_TOO_LARGE' });
    expect(res.sent).toBeLessThan(80 * 1024 * 1024 + 8 * 1024 * 1024);
  }, 60_000);
});
