// fal's API against the REAL server + tiny engine, driven by the official `@fal-ai/client` configured only with
// proxyUrl (fal's proxy protocol at /fal/proxy): subscribe, queue submit/status/result/cancel, the synchronous
// run, a fal_webhook round trip, deterministic runs, fal-shaped errors, the same runs read and canceled through Runflow's routes, and
// the client's storage uploads (a Blob in the input, fal.storage.upload) with their upload URL's terms.
import { createHash, createHmac, createPublicKey, verify } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { createFalClient, ApiError, ValidationError } from '@fal-ai/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashKey, keyId } from '../../src/auth/keys.ts';
import { callbackReceiver } from '../helpers/receivers.ts';
import { dataUri, testImage } from '../helpers/images.ts';
import { imagesBatchedWithOthers } from '../helpers/engine-metrics.ts';
import { startServer, waitFor, type ServerHandle } from '../helpers/server.ts';

const KEY = 'ks_test_fal';
const OTHER_KEY = 'ks_test_fal_other';
const SECRET = 'fal-callback-secret';
const EDIT = 'fal-ai/flux-2/klein/4b/edit';
let server: ServerHandle;
let fal: ReturnType<typeof createFalClient>;
let image: string;

beforeAll(async () => {
  server = await startServer({
    apiKeys: [KEY, OTHER_KEY],
    env: { KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1', KLEINSERVE_CALLBACK_SECRET: SECRET, KLEINSERVE_CALLBACK_BASE_DELAY_MS: '50' },
  });
  fal = createFalClient({ credentials: KEY, proxyUrl: { url: `${server.url}/fal/proxy`, when: 'always' } });
  image = dataUri(await testImage(96, 64));
}, 180_000);
afterAll(async () => server?.dispose());

const runflow = (path: string, init: RequestInit = {}) =>
  fetch(`${server.url}${path}`, { ...init, headers: { authorization: `Bearer ${KEY}`, ...(init.headers ?? {}) } });

describe('fal through the official client and the proxy protocol', () => {
  it('fal.subscribe runs an edit and its image follows the input size', async () => {
    const updates: string[] = [];
    const result = await fal.subscribe(EDIT, {
      input: { prompt: 'make it blue', image_urls: [image], num_inference_steps: 1, seed: 7, output_format: 'jpeg' },
      logs: true,
      pollInterval: 100,
      onQueueUpdate: (u) => updates.push(u.status),
    });
    expect(updates.at(-1)).toBe('COMPLETED');
    expect(result.requestId).toMatch(/^[0-9a-f-]{36}$/);
    const data = result.data as any;
    expect(data).toMatchObject({ seed: 7, prompt: 'make it blue', has_nsfw_concepts: [false] });
    expect(data.images[0]).toMatchObject({ content_type: 'image/jpeg', width: 96, height: 64 });
    const img = await fetch(data.images[0].url);
    expect(img.status).toBe(200);
    expect(img.headers.get('content-type')).toBe('image/jpeg');
    // The same run, read through Runflow's route.
    const run = await (await runflow(`/v1/runs/${result.requestId}`)).json();
    expect(run).toMatchObject({ id: result.requestId, status_code: 'succeeded', model_id: 'black-forest-labs/flux-2-klein-4b/edit' });
  });

  it('queue.submit / status / result, with logs, and Runflow SSE on the same run', async () => {
    const { request_id } = await fal.queue.submit(EDIT, { input: { prompt: 'queue it', image_urls: [image], num_inference_steps: 1, num_images: 2 } });
    const sse = await runflow(`/v1/runs/${request_id}/events`);
    expect(sse.headers.get('content-type')).toContain('text/event-stream');
    const text = await sse.text();
    expect(text).toContain('event: run');
    const status = await fal.queue.status(EDIT, { requestId: request_id, logs: true });
    expect(status.status).toBe('COMPLETED');
    expect((status as any).logs.map((l: any) => l.message).join('\n')).toMatch(/inference started/);
    const { data, requestId } = await fal.queue.result(EDIT, { requestId: request_id });
    expect(requestId).toBe(request_id);
    expect((data as any).images).toHaveLength(2);
  });

  it('queue.cancel cancels, and Runflow cancel works on a fal-created request', async () => {
    const a = await fal.queue.submit(EDIT, { input: { prompt: 'cancel me', image_urls: [image], num_inference_steps: 50 } });
    await fal.queue.cancel(EDIT, { requestId: a.request_id });
    expect((await (await runflow(`/v1/runs/${a.request_id}`)).json()).status_code).toBe('canceled');
    expect((await fal.queue.status(EDIT, { requestId: a.request_id })).status).toBe('COMPLETED');
    const err = await fal.queue.result(EDIT, { requestId: a.request_id }).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.body.detail).toMatch(/cancelled/);

    const b = await fal.queue.submit(EDIT, { input: { prompt: 'cancel me too', image_urls: [image], num_inference_steps: 50 } });
    expect((await runflow(`/v1/runs/${b.request_id}/cancel`, { method: 'POST' })).status).toBe(201);
    const again = await fal.queue.cancel(EDIT, { requestId: b.request_id }).catch((e) => e);
    expect(again.status).toBe(400);
    expect(again.body.status).toBe('ALREADY_COMPLETED');
  });

  it('fal_webhook: the result is POSTed, signed, through the retrying outbox', async () => {
    const receiver = await callbackReceiver(1);
    try {
      const { request_id } = await fal.queue.submit(EDIT, {
        input: { prompt: 'hook', image_urls: [image], num_inference_steps: 1 },
        webhookUrl: receiver.url('/fal'),
      });
      await waitFor(() => receiver.received.some((r) => r.status === 200), 60_000, 'fal webhook');
      const ok = receiver.received.find((r) => r.status === 200)!;
      expect(receiver.received[0].status).toBe(500);
      expect(ok.body).toMatchObject({ request_id, gateway_request_id: request_id, status: 'OK' });
      expect(ok.body.payload.images[0].width).toBe(96);
      expect(ok.headers['runflow-signature']).toBe(createHmac('sha256', SECRET).update(ok.raw).digest('hex'));

      // Verified as fal's docs say, with the JWKS fetched from this server instead of fal's.
      const jwksRes = await fetch(`${server.url}/.well-known/jwks.json`);
      expect(jwksRes.status).toBe(200);
      const { keys } = (await jwksRes.json()) as { keys: { kty: string; crv: string; x: string; kid: string }[] };
      expect(keys[0]).toMatchObject({ kty: 'OKP', crv: 'Ed25519', kid: expect.any(String) });
      const doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as any;
      expect(doc.paths['/.well-known/jwks.json'].get.security).toEqual([]);
      const h = ok.headers as Record<string, string>;
      expect(h['x-fal-webhook-request-id']).toBe(request_id);
      expect(h['x-fal-webhook-user-id']).toBe(keyId(hashKey(KEY)));
      const verifyFal = (raw: string) => {
        const timestamp = Number(h['x-fal-webhook-timestamp']);
        if (!Number.isInteger(timestamp) || Math.abs(Date.now() / 1000 - timestamp) > 300) return false;
        const digest = createHash('sha256').update(raw).digest('hex');
        const message = Buffer.from([h['x-fal-webhook-request-id'], h['x-fal-webhook-user-id'], h['x-fal-webhook-timestamp'], digest].join('\n'));
        const signature = Buffer.from(h['x-fal-webhook-signature'], 'hex');
        return keys.some((jwk) => verify(null, message, createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x }, format: 'jwk' }), signature));
      };
      expect(verifyFal(ok.raw)).toBe(true);
      expect(verifyFal(ok.raw.replace('"OK"', '"ERROR"'))).toBe(false);
      // Each attempt is signed afresh, so a retry's timestamp is its own.
      expect(receiver.received[0].headers['x-fal-webhook-signature']).toMatch(/^[0-9a-f]{128}$/);
    } finally {
      await receiver.close();
    }
  });

  it('the synchronous route: fal.run answers the result; sync_mode answers data URIs and keeps nothing', async () => {
    const { data, requestId } = await fal.run('fal-ai/flux-2/klein/4b', {
      input: { prompt: 'a red square', image_size: { width: 64, height: 64 }, num_inference_steps: 1 },
    });
    expect((data as any).images[0]).toMatchObject({ width: 64, height: 64, content_type: 'image/png' });
    expect((await runflow(`/v1/runs/${requestId}`)).status).toBe(200);

    const inline = await fal.run(EDIT, { input: { prompt: 'inline', image_urls: [image], num_inference_steps: 1, sync_mode: true } });
    expect((inline.data as any).images[0].url).toMatch(/^data:image\/png;base64,/);
    await waitFor(async () => (await runflow(`/v1/runs/${inline.requestId}`)).status === 404, 10_000, 'sync_mode run erased');
  });

  it('deterministic: true gives the same bytes alone and with runs queued beside it; a non-boolean is refused naming it', async () => {
    const det = { prompt: 'same bytes', image_urls: [image], num_inference_steps: 1, seed: 21, output_format: 'png' as const, deterministic: true };
    const bytesOf = async (input: Record<string, unknown>) => {
      const { data, requestId } = await fal.subscribe(EDIT, { input: input as typeof det, pollInterval: 100 });
      const res = await fetch((data as any).images[0].url);
      expect(res.status).toBe(200);
      return { bytes: Buffer.from(await res.arrayBuffer()), requestId };
    };
    const statusOf = async (id: string) => (await (await runflow(`/v1/runs/${id}`)).json()).status_code;
    const alone = await bytesOf(det);
    const batchedBefore = await imagesBatchedWithOthers(server.url);
    // A larger run keeps the engine busy, so that the same-shaped runs below queue behind it and reach its batcher together.
    const busy = await fal.queue.submit(EDIT, { input: { prompt: 'keep busy', image_urls: [image], image_size: { width: 1024, height: 1024 }, num_inference_steps: 4, seed: 7 } });
    await waitFor(async () => (await statusOf(busy.request_id)) === 'running', 60_000, 'busy run running');
    const [among] = await Promise.all([bytesOf(det), bytesOf({ ...det, deterministic: undefined, seed: 22 }), bytesOf({ ...det, deterministic: undefined, prompt: 'a neighbour' })]);
    await waitFor(async () => (await statusOf(busy.request_id)) === 'succeeded', 60_000, 'busy run done');
    expect((await imagesBatchedWithOthers(server.url)) - batchedBefore, 'the two neighbours batched, the deterministic run alone').toBe(2);
    expect(among.bytes.equals(alone.bytes), 'the same PNG bytes alone and among neighbours').toBe(true);
    // The request id is the run id: the run read back carries the choice.
    expect((await (await runflow(`/v1/runs/${among.requestId}`)).json()).input.deterministic).toBe(true);

    const bad = await fal.queue.submit(EDIT, { input: { ...det, deterministic: 'yes' } as any }).catch((e) => e);
    expect(bad).toBeInstanceOf(ValidationError);
    expect(bad.status).toBe(422);
    expect(bad.fieldErrors[0].loc).toEqual(['body', 'deterministic']);
    const { components } = (await (await fetch(`${server.url}/openapi.json`)).json()) as any;
    for (const schema of ['FalEditInput', 'FalTextToImageInput']) expect(components.schemas[schema].properties.deterministic).toMatchObject({ type: 'boolean', description: expect.stringContaining('byte-identical') });
  });

  it('errors take fal\'s shape, naming the field and the reason', async () => {
    const bad = await fal.queue.submit(EDIT, { input: { prompt: 'x', image_urls: ['not an image'], num_inference_steps: 1 } }).catch((e) => e);
    expect(bad).toBeInstanceOf(ValidationError);
    expect(bad.status).toBe(422);
    expect(bad.fieldErrors[0].loc).toEqual(['body', 'image_urls', 0]);
    expect(bad.fieldErrors[0].msg).toBeTruthy();

    const unknown = await fal.queue.submit(EDIT, { input: { prompt: 'x', image_urls: [image], strength: 0.5 } as any }).catch((e) => e);
    expect(unknown.status).toBe(422);
    expect(JSON.stringify(unknown.body.detail)).toContain('strength');

    const anon = createFalClient({ credentials: 'wrong_key', proxyUrl: { url: `${server.url}/fal/proxy`, when: 'always' } });
    const unauth = await anon.queue.status(EDIT, { requestId: '00000000-0000-0000-0000-000000000000' }).catch((e) => e);
    expect(unauth.status).toBe(401);
    expect(unauth.body.detail).toMatch(/API key/);

    const target = await fetch(`${server.url}/fal/proxy`, { method: 'POST', headers: { authorization: `Key ${KEY}`, 'x-fal-target-url': 'https://evil.example/x' } });
    expect(target.status).toBe(400);
    expect((await target.json()).errors[0].field).toBe('header.x-fal-target-url');
  });
});

/**
 * PUTs `total` bytes without a Content-Length (chunked) over a plain socket, stopping once the server answers.
 * The server answers and closes while this side still sends; Node's HTTP client then destroys the socket on the
 * failed write, and whether it had parsed the answer first is a race. A socket that ignores the write error and
 * keeps what it received reads the answer every time.
 */
function putStreamed(url: string, total: number): Promise<{ status: number; body: any; sent: number }> {
  const { hostname, port, pathname } = new URL(url);
  return new Promise((resolve, reject) => {
    let sent = 0;
    const received: Buffer[] = [];
    const socket = net.connect(Number(port), hostname, () => {
      socket.write(`PUT ${pathname} HTTP/1.1\r\nHost: ${hostname}\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n`);
      const chunk = Buffer.alloc(256 * 1024, 0x5a);
      const pump = () => {
        while (sent < total && !received.length && !socket.destroyed) {
          sent += chunk.length;
          socket.write(`${chunk.length.toString(16)}\r\n`);
          socket.write(chunk);
          if (!socket.write('\r\n')) return void socket.once('drain', pump);
        }
        if (!received.length && !socket.destroyed) socket.write('0\r\n\r\n');
      };
      pump();
    });
    socket.on('data', (c) => received.push(c));
    socket.on('error', () => {}); // the write after the server's close fails; what was received still counts
    socket.on('close', () => {
      const text = Buffer.concat(received).toString();
      const split = text.indexOf('\r\n\r\n');
      if (split < 0) return reject(new Error(`no answer after ${sent} bytes sent`));
      resolve({ status: Number(text.split(' ')[1]), body: JSON.parse(text.slice(split + 4)), sent });
    });
  });
}

/** Sends only the headers of a PUT declaring `length` bytes: a refusal from the Content-Length alone is read
 * whole, where a client streaming the body races the server's close and may see EPIPE instead of the answer. */
function putDeclared(url: string, length: number): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'PUT', headers: { 'content-type': 'image/jpeg', 'content-length': String(length) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) });
      });
    });
    req.on('error', reject);
    req.flushHeaders();
  });
}

describe("fal storage: the client's uploads of Blobs and Files", () => {
  const MiB = 1024 * 1024;
  let tall: Buffer;
  beforeAll(async () => {
    tall = await testImage(64, 112);
  });
  const other = () => createFalClient({ credentials: OTHER_KEY, proxyUrl: { url: `${server.url}/fal/proxy`, when: 'always' } });

  it('fal.subscribe uploads a Blob in image_urls and edits that image', async () => {
    // The endpoint's input type says string; the client uploads any Blob it finds in an input and sends its URL.
    const blob = new Blob([new Uint8Array(tall)], { type: 'image/jpeg' }) as unknown as string;
    const result = await fal.subscribe(EDIT, { input: { prompt: 'from a blob', image_urls: [blob], num_inference_steps: 1 }, pollInterval: 100 });
    // The edit's size follows its input: the uploaded 64x112, not anything else.
    expect((result.data as any).images[0]).toMatchObject({ width: 64, height: 112 });
    const run = await (await runflow(`/v1/runs/${result.requestId}`)).json();
    const input = await fetch(run.input.image_urls[0]);
    expect(Buffer.from(await input.arrayBuffer()).equals(tall)).toBe(true);
  });

  it('fal.storage.upload answers a file_url that the same key runs and reads, and no other key can', async () => {
    const url = await fal.storage.upload(new Blob([new Uint8Array(tall)], { type: 'image/jpeg' }));
    expect(url.startsWith(`${server.url}/v1/assets/`)).toBe(true);

    const own = await fetch(url, { headers: { authorization: `Key ${KEY}` } });
    expect(own.status).toBe(200);
    expect(own.headers.get('content-type')).toBe('image/jpeg');
    expect(Buffer.from(await own.arrayBuffer()).equals(tall)).toBe(true);
    expect((await fetch(url)).status).toBe(401);
    expect((await fetch(url, { headers: { authorization: `Key ${OTHER_KEY}` } })).status).toBe(404);

    const { data } = await fal.subscribe(EDIT, { input: { prompt: 'from file_url', image_urls: [url], num_inference_steps: 1 }, pollInterval: 100 });
    expect((data as any).images[0]).toMatchObject({ width: 64, height: 112 });
    const stolen = await other().queue.submit(EDIT, { input: { prompt: 'not mine', image_urls: [url], num_inference_steps: 1 } }).catch((e) => e);
    expect(stolen).toBeInstanceOf(ValidationError);
    expect(stolen.fieldErrors[0].loc).toEqual(['body', 'image_urls', 0]);
    expect(stolen.fieldErrors[0].msg).toMatch(/not found/);
  });

  it('the upload URL takes one image under the inline-image limit, once; larger files are refused', async () => {
    const initiate = (content_type: string) =>
      fetch(`${server.url}/fal/proxy`, {
        method: 'POST',
        headers: { authorization: `Key ${KEY}`, 'content-type': 'application/json', 'x-fal-target-url': 'https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3' },
        body: JSON.stringify({ content_type, file_name: 'x.jpg' }),
      });
    const notImageType = await initiate('text/plain');
    expect(notImageType.status).toBe(422);
    expect((await notImageType.json()).detail[0].loc).toEqual(['body', 'content_type']);

    const { upload_url } = await (await initiate('image/jpeg')).json();
    const put = (body: Uint8Array) => fetch(upload_url, { method: 'PUT', headers: { 'content-type': 'image/jpeg' }, body: new Blob([body as Uint8Array<ArrayBuffer>]) });
    const text = await put(new TextEncoder().encode('hello, not an image'));
    expect(text.status).toBe(422);
    expect((await text.json()).errors).toEqual([{ field: 'body', reason: 'text is not an image' }]);
    const declared = await putDeclared(upload_url, 20 * MiB + 1);
    expect(declared.status).toBe(413);
    expect(declared.body.errors[0]).toMatchObject({ field: 'body', reason: expect.stringContaining(`${20 * MiB}-byte limit`) });
    // Without a Content-Length the body is refused as it crosses the limit, not once it has all arrived.
    const streamed = await putStreamed(upload_url, 64 * MiB);
    expect(streamed.status).toBe(413);
    expect(streamed.sent).toBeLessThan(40 * MiB);

    expect((await put(new Uint8Array(tall))).status).toBe(200);
    const again = await put(new Uint8Array(tall));
    expect(again.status).toBe(409);
    expect(await again.json()).toMatchObject({ code: 'UPLOAD_URL_USED', message: expect.stringContaining('already used') });
    const unknown = await fetch(upload_url.replace(/[0-9a-f]{32}$/, '0'.repeat(32)), { method: 'PUT', body: new Uint8Array(tall) });
    expect(unknown.status).toBe(404);
    expect((await unknown.json()).code).toBe('UPLOAD_NOT_FOUND');

    // Over 90 MB the client asks for a multipart upload, refused before any byte is sent.
    const huge = await fal.storage.upload(new Blob([new Uint8Array(91 * MiB)], { type: 'image/jpeg' })).catch((e) => e);
    expect(huge).toBeInstanceOf(ApiError);
    expect(huge.status).toBe(413);
    expect(huge.message).toMatch(/over 90 MB.*20 MiB/);
  });
});
