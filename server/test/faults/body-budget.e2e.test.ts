// The request-body budget against the real server and tiny engine: bodies that are slow to arrive hold their
// declared bytes, one key cannot hold more than its bound (429), all callers together no more than the
// server's (503), refusals come before the body is read, and every byte comes back when a request ends or
// its client goes away mid-body. Slow senders over raw sockets hold bytes for as long as a case needs them,
// and each step waits for the held-bytes gauge, so nothing here races the clock.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { startServer, tinyModelDir, tmpDir, waitFor, type ServerHandle } from '../helpers/server.ts';

const KEY_A = 'budget_key_a';
const KEY_B = 'budget_key_b';
const MiB = 1024 * 1024;
const BODY_LIMIT = 80 * MiB; // the server's default body limit: the least a bound may be
const PER_KEY = BODY_LIMIT;
const IN_FLIGHT = 120 * MiB;
const CREATE = '/v1/models/flux-2-klein-4b/edit/runs';

let server: ServerHandle;
let small: Buffer;
const open = new Set<net.Socket>();

beforeAll(async () => {
  small = await testImage(96, 64);
  server = await startServer({
    apiKeys: [KEY_A, KEY_B],
    env: { KLEINSERVE_BODY_BYTES_PER_KEY: String(PER_KEY), KLEINSERVE_BODY_BYTES_IN_FLIGHT: String(IN_FLIGHT) },
  });
});

afterEach(async () => {
  // A case that failed half-way must not leave its held bodies to the next one.
  for (const s of open) s.destroy();
  open.clear();
});

afterAll(async () => {
  await server?.dispose();
});

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: any;
}

/**
 * A request whose headers and the first part of its body are sent at once; the rest waits for `finish`.
 * `answer` settles with what came back, or status 0 when nothing did within `waitMs` of asking.
 */
async function slowRequest(opts: { method?: string; path: string; key?: string; length?: number; first: string; contentType?: string }) {
  const s = net.connect(server.port, '127.0.0.1');
  open.add(s);
  s.on('error', () => {});
  await new Promise((r) => s.once('connect', r));
  const head = [
    `${opts.method ?? 'POST'} ${opts.path} HTTP/1.1`,
    'Host: x',
    'Connection: close',
    `Content-Type: ${opts.contentType ?? 'application/json'}`,
    opts.key ? `Authorization: Bearer ${opts.key}` : '',
    // No length: chunked, so the server has only its body limit to go by.
    opts.length === undefined ? 'Transfer-Encoding: chunked' : `Content-Length: ${opts.length}`,
  ].filter(Boolean);
  const frame = (text: string) => (opts.length === undefined ? `${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n` : text);
  s.write(`${head.join('\r\n')}\r\n\r\n${frame(opts.first)}`);
  let received = Buffer.alloc(0);
  s.on('data', (d: Buffer) => (received = Buffer.concat([received, d])));
  const parse = (): Answer | null => {
    const text = received.toString();
    const end = text.indexOf('\r\n\r\n');
    if (end < 0) return null;
    const lines = text.slice(0, end).split('\r\n');
    const headers = Object.fromEntries(lines.slice(1).map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
    const bodyText = received.subarray(Buffer.byteLength(text.slice(0, end)) + 4);
    if (bodyText.length < Number(headers['content-length'] ?? 0)) return null;
    let body: any = bodyText.toString();
    try {
      body = JSON.parse(body);
    } catch {
      // not JSON: the assertion on it will say so
    }
    return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0])?.[1] ?? 0), headers, body };
  };
  return {
    /** The answer as soon as it is whole; status 0 if none came within `waitMs`. */
    async answer(waitMs = 5000): Promise<Answer> {
      let got: Answer | null = null;
      await waitFor(() => (got = parse()) !== null || s.destroyed, waitMs, 'an answer').catch(() => {});
      return got ?? parse() ?? { status: 0, headers: {}, body: null };
    },
    finish(rest: string) {
      s.write(opts.length === undefined ? `${frame(rest)}0\r\n\r\n` : rest);
    },
    /** The client goes away mid-body. */
    hangUp() {
      s.destroy();
      open.delete(s);
    },
  };
}

async function heldBytes(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${KEY_A}` } })).text();
  const m = /^kleinserve_http_body_bytes_held (\S+)$/m.exec(text);
  if (!m) throw new Error('no kleinserve_http_body_bytes_held gauge on /metrics');
  return Number(m[1]);
}

/** Waits until exactly `bytes` are held: each admission or release is seen before the next step. */
async function held(bytes: number): Promise<void> {
  let last = NaN;
  await waitFor(async () => (last = await heldBytes()) === bytes, 5000, `${bytes} bytes held`).catch((err) => {
    throw new Error(`${(err as Error).message} (held: ${last})`);
  });
}

const expectRefusal = (res: Answer, status: number, code: string) => {
  expect(res.status).toBe(status);
  expect(res.headers['retry-after']).toMatch(/^\d+$/);
  expect(Object.keys(res.body).sort()).toEqual(['code', 'errors', 'message']);
  expect(res.body.code).toBe(code);
  expect(res.body.errors).toEqual([{ field: 'body', reason: expect.any(String) }]);
};

describe('request-body budget', () => {
  it("a key's second slow body over its bound is a 429 before it is read, while the first completes", async () => {
    const body = JSON.stringify({ input: { prompt: 'p', image_urls: [dataUri(small)], steps: 1 } });
    const length = Buffer.byteLength(body);
    const first = await slowRequest({ path: CREATE, key: KEY_A, length, first: body.slice(0, 100) });
    await held(length);

    // A full-size body beside it would pass the key's bound: refused after its headers and 4 KB of body.
    const t0 = Date.now();
    const second = await slowRequest({ path: CREATE, key: KEY_A, length: BODY_LIMIT, first: `{"input":{"prompt":"${'z'.repeat(4096)}` });
    const refused = await second.answer();
    expectRefusal(refused, 429, 'RATE_LIMITED');
    expect(refused.body.errors[0].reason).toMatch(new RegExp(`over its ${PER_KEY}-byte bound \\(${length} held\\)`));
    expect(Date.now() - t0).toBeLessThan(3000);
    await held(length); // the refused body holds nothing

    first.finish(body.slice(100));
    const done = await first.answer(15_000);
    expect(done.status).toBe(200);
    expect(done.body.status_code).toBe('queued');
    await held(0);
  }, 30_000);

  it("another key is not refused for the first key's bodies, until the server's bound: 503", async () => {
    const a = await slowRequest({ path: CREATE, key: KEY_A, length: BODY_LIMIT, first: '{"input":' });
    await held(BODY_LIMIT);
    // Key A is at its bound; key B is not, and is admitted beside it.
    const b = await slowRequest({ path: CREATE, key: KEY_B, length: 30 * MiB, first: '{"input":' });
    await held(BODY_LIMIT + 30 * MiB);

    // B's 50 MiB would be within its own bound, but not the server's 120 MiB.
    const over = await slowRequest({ path: CREATE, key: KEY_B, length: 20 * MiB, first: '{"input":' });
    const busy = await over.answer();
    expectRefusal(busy, 503, 'SERVER_BUSY');

    // A public route without a key counts against the server's bound only: 10 MiB fits (the unknown upload URL
    // is then the route's own 404), 20 MiB does not.
    const upload = `/v1/asset-uploads/nope/${'0'.repeat(32)}`;
    const fits = await slowRequest({ method: 'PUT', path: upload, length: 10 * MiB, first: 'x', contentType: 'image/png' });
    expect((await fits.answer()).status).toBe(404);
    const anonymous = await slowRequest({ method: 'PUT', path: upload, length: 20 * MiB, first: 'x', contentType: 'image/png' });
    expectRefusal(await anonymous.answer(), 503, 'SERVER_BUSY');
    // A path no route serves holds nothing: its 404 comes before its body is read, whatever the budget says.
    for (const path of ['/no/such/route', '/v1/images/nope']) {
      const nowhere = await slowRequest({ path, length: 20 * MiB, first: '{' });
      const answer = await nowhere.answer();
      expect(answer.status).toBe(404);
      expect(answer.body).toMatchObject({ code: 'NOT_FOUND' });
    }
    await held(BODY_LIMIT + 30 * MiB);

    a.hangUp();
    b.hangUp();
    await held(0);
  }, 30_000);

  it('bodies whose clients went away mid-body are all given back: a full-size body fits again', async () => {
    // Two clients hang up mid-body, one of them chunked (so it held the whole body limit).
    const gone = [
      await slowRequest({ path: CREATE, key: KEY_A, length: 30 * MiB, first: '{"input":' }),
      await slowRequest({ path: CREATE, key: KEY_B, first: '{"input":' }),
    ];
    await held(30 * MiB + BODY_LIMIT);
    for (const g of gone) g.hangUp();
    await held(0);

    // The whole budget is free: a chunked body (reserving the full body limit) from the same key is admitted.
    const full = await slowRequest({ path: CREATE, key: KEY_A, first: '{"input":' });
    await held(BODY_LIMIT);
    const refusedBeside = await slowRequest({ path: CREATE, key: KEY_A, length: 1, first: '{' });
    expectRefusal(await refusedBeside.answer(), 429, 'RATE_LIMITED');
    full.hangUp();
    await held(0);

    // And a real request after all of it succeeds.
    const res = await fetch(`${server.url}${CREATE}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/json' },
      body: JSON.stringify({ input: { prompt: 'p', image_urls: [dataUri(small)], steps: 1 } }),
    });
    expect(res.status).toBe(200);
    await held(0);
  }, 30_000);

  it('a bound below the body limit stops the server at start, naming the variable', async () => {
    const dataDir = tmpDir('ks-budget-');
    try {
      const bin = path.resolve(import.meta.dirname, '../../bin/kleinserve.mjs');
      const result = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        execFile(
          process.execPath,
          [bin, 'serve', '--model', tinyModelDir(), '--port', '0', '--data', dataDir, '--api-key', KEY_A],
          { env: { ...process.env, LOG_LEVEL: 'warn', KLEINSERVE_BODY_BYTES_PER_KEY: String(8 * MiB), KLEINSERVE_BODY_BYTES_IN_FLIGHT: String(12 * MiB) }, timeout: 20_000 },
          (err, _stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
        );
      });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`KLEINSERVE_BODY_BYTES_PER_KEY: ${8 * MiB} is below the ${BODY_LIMIT}-byte request body limit`);
      expect(result.stderr).toContain(`KLEINSERVE_BODY_BYTES_IN_FLIGHT: ${12 * MiB} is below the ${BODY_LIMIT}-byte request body limit`);
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }, 30_000);
});
