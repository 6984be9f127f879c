// Unit tests for retry, failover and idempotent creation, against small local HTTP doubles.
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Kleinserve, KleinserveConnectionError, KleinserveError, toImageUrl } from '../src/index.js';

type Handler = (req: IncomingMessage, body: string) => { status: number; body: unknown; headers?: Record<string, string> } | 'drop';
const servers: Server[] = [];

async function serve(handler: Handler): Promise<string> {
  const srv = createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    const out = handler(req, body);
    if (out === 'drop') { req.socket.destroy(); return; }
    res.writeHead(out.status, { 'content-type': 'application/json', ...out.headers }).end(JSON.stringify(out.body));
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

const run = (ref: string) => ({ id: 'r1', status_code: 'queued', client_ref: ref });

describe('transport', () => {
  it('retries a dropped create with one Idempotency-Key, and sends client_ref untouched', async () => {
    const seen: { ref: string | undefined; key: string | undefined }[] = [];
    let calls = 0;
    const url = await serve((req, body) => {
      const ref = JSON.parse(body).client_ref;
      seen.push({ ref, key: req.headers['idempotency-key'] as string | undefined });
      calls++;
      return calls === 1 ? 'drop' : calls === 2 ? { status: 503, body: { code: 'MODEL_UNAVAILABLE', message: 'x' } } : { status: 200, body: run(ref) };
    });
    const client = new Kleinserve({ baseUrl: url, apiKey: 'k', retryDelayMs: 5 });
    await client.runs.create({ input: { prompt: 'p', image_urls: ['https://x/y.png'] } });
    expect(seen).toHaveLength(3);
    expect(seen[0].key).toMatch(/^sdk_[0-9a-f-]{36}$/);
    expect(seen.every((s) => s.key === seen[0].key)).toBe(true);
    expect(seen.every((s) => s.ref === undefined)).toBe(true);

    // A second logical create gets its own key; the caller's client_ref goes as given.
    seen.length = 0;
    await client.runs.create({ input: { prompt: 'p', image_urls: ['https://x/y.png'] }, client_ref: 'order-17' });
    await client.runs.create({ input: { prompt: 'p', image_urls: ['https://x/y.png'] }, client_ref: 'order-17' }, { idempotencyKey: 'mine_1' });
    const keys = seen.map((s) => s.key);
    expect(new Set(keys).size).toBe(keys.length);
    expect(keys.at(-1)).toBe('mine_1');
    expect(seen.every((s) => s.ref === 'order-17')).toBe(true);
  });

  it('fails over to the next base URL in order and remembers the dead one', async () => {
    let primaryHits = 0;
    let secondaryHits = 0;
    const primary = await serve(() => { primaryHits++; return 'drop'; });
    const secondary = await serve((_req, body) => { secondaryHits++; return { status: 200, body: run(JSON.parse(body || '{}').client_ref ?? '') }; });
    const client = new Kleinserve({ baseUrl: [primary, secondary], retryDelayMs: 1 });
    await client.runs.get('r1');
    await client.runs.get('r1');
    expect(primaryHits).toBe(1);
    expect(secondaryHits).toBe(2);
  });

  it('does not retry 4xx and carries code and errors[]', async () => {
    let hits = 0;
    const url = await serve(() => {
      hits++;
      return { status: 422, body: { code: 'INPUT_VALIDATION_FAILED', message: 'bad', errors: [{ field: 'input.image_urls[1]', message: 'too small' }] } };
    });
    const client = new Kleinserve({ baseUrl: url, retryDelayMs: 1 });
    const err = await client.runs.create({ input: { prompt: 'p' } }).catch((e) => e);
    expect(err).toBeInstanceOf(KleinserveError);
    expect(err.status).toBe(422);
    expect(err.code).toBe('INPUT_VALIDATION_FAILED');
    expect(err.errors[0].field).toBe('input.image_urls[1]');
    expect(hits).toBe(1);
  });

  it('waits as long as Retry-After says on 429, then succeeds', async () => {
    const at: number[] = [];
    const url = await serve(() => {
      at.push(Date.now());
      return at.length === 1
        ? { status: 429, body: { code: 'RATE_LIMITED', message: 'slow down' }, headers: { 'retry-after': '1' } }
        : { status: 200, body: run('x') };
    });
    const client = new Kleinserve({ baseUrl: url, retryDelayMs: 1 });
    await client.runs.get('r1');
    expect(at).toHaveLength(2);
    expect(at[1] - at[0]).toBeGreaterThanOrEqual(950);
  });

  it('gives a connection error naming every URL when none answers', async () => {
    const dead = await serve(() => 'drop');
    const client = new Kleinserve({ baseUrl: [dead, 'http://127.0.0.1:9'], maxRetries: 3, retryDelayMs: 1 });
    const err = await client.health().catch((e) => e);
    expect(err).toBeInstanceOf(KleinserveConnectionError);
    expect(err.message).toContain(dead);
    expect(err.attempts).toBe(3);
  });
});

describe('images', () => {
  it('names a missing file by its full path instead of guessing what the string was', async () => {
    const err = await toImageUrl('no/such/photo.jpg', 2).catch((e) => e);
    expect(err).toBeInstanceOf(TypeError);
    expect(err.message).toBe(`images[2]: file not found: ${path.resolve('no/such/photo.jpg')}`);
    const dir = await toImageUrl(os.tmpdir()).catch((e) => e);
    expect(dir.message).toBe(`images[0]: ${path.resolve(os.tmpdir())} is not a file`);
  });
});
