// Image-input refusals as the API reports them, complementing hostile-images.test.ts:
// request-shape refusals at submit time, and the fetch limits (time, bytes, redirects, SSRF on a redirect)
// that fail an already-queued run at the preprocess stage. Real server, real engine.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, startServer, type ServerHandle } from '../helpers/server.ts';

// Real engine on 2 shared cores: runs can take tens of seconds when other suites load the machine.
vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

const KEY = 'refusals_key';
/** Allow-listed stand-in for the public internet; 127.0.0.1 stays forbidden. */
const PUBLIC = '127.0.0.2';
let srv: ServerHandle;
let api: Api;
let origin: http.Server;
let canary: http.Server;
let base: string;
const canaryHits: string[] = [];

beforeAll(async () => {
  const small = await testImage(96, 64);
  const big = Buffer.alloc(150_000, 1);
  canary = http.createServer((req, res) => {
    canaryHits.push(req.url!);
    res.end('secret');
  });
  await new Promise<void>((r) => canary.listen(0, '127.0.0.1', r));
  const canaryPort = (canary.address() as AddressInfo).port;
  origin = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const hop = Number(url.searchParams.get('hop') ?? 0);
    switch (url.pathname) {
      case '/ok.jpg':
        return void res.writeHead(200, { 'content-type': 'image/jpeg' }).end(small);
      case '/big.jpg':
        return void res.writeHead(200, { 'content-type': 'image/jpeg' }).end(big);
      case '/chunked-big':
        res.writeHead(200, { 'content-type': 'image/jpeg' });
        for (let i = 0; i < 20; i++) res.write(Buffer.alloc(10_000, 2));
        return void res.end();
      case '/slow.jpg':
        return void setTimeout(() => res.writeHead(200).end(small), 5000);
      case '/chain':
        return void res.writeHead(302, { location: hop < 3 ? `/chain?hop=${hop + 1}` : '/ok.jpg' }).end();
      case '/to-loopback':
        return void res.writeHead(302, { location: `http://127.0.0.1:${canaryPort}/latest/meta-data/` }).end();
      case '/page.html':
        return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html><body>not an image</body></html>');
      default:
        return void res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => origin.listen(0, PUBLIC, r));
  base = `http://${PUBLIC}:${(origin.address() as AddressInfo).port}`;
  srv = await startServer({
    apiKeys: [KEY],
    env: {
      KLEINSERVE_FETCH_ALLOWLIST: `${PUBLIC}/32`,
      KLEINSERVE_FETCH_MAX_BYTES: '100000',
      KLEINSERVE_FETCH_MAX_REDIRECTS: '2',
      KLEINSERVE_FETCH_TIMEOUT_MS: '1500',
    },
  });
  api = new Api(srv.url, KEY);
});
afterAll(async () => {
  await srv?.dispose();
  origin?.close();
  canary?.close();
});

const fields = (body: any) => body.errors.map((e: any) => e.field);

describe('refusals at submit time (422 INPUT_VALIDATION_FAILED naming the field)', () => {
  it('refuses too few and too many images', async () => {
    const img = dataUri(await testImage());
    for (const image_urls of [[], [img, img, img, img, img]]) {
      const { status, body } = await api.create({ input: { prompt: 'x', image_urls } });
      expect(status).toBe(422);
      expect(body.code).toBe('INPUT_VALIDATION_FAILED');
      expect(fields(body)).toEqual(['input.image_urls']);
    }
  });

  it('names every bad entry: loopback, private, metadata and non-http URLs', async () => {
    const { status, body } = await api.create({
      input: {
        prompt: 'x',
        image_urls: [dataUri(await testImage()), 'http://127.0.0.1:9/a.jpg', 'http://10.1.2.3/a.jpg', 'ftp://example.com/a.jpg'],
      },
    });
    expect(status).toBe(422);
    expect(fields(body)).toEqual(['input.image_urls[1]', 'input.image_urls[2]', 'input.image_urls[3]']);
    expect(body.errors[0].reason).toMatch(/non-public/);
    const meta = await api.create({ input: { prompt: 'x', image_urls: ['http://169.254.169.254/latest/meta-data/'] } });
    expect(meta.status).toBe(422);
    expect(meta.body.errors[0]).toMatchObject({ field: 'input.image_urls[0]', reason: expect.stringMatching(/non-public/) });
  });

  it('refuses a callback_url to a private address, and missing or wrong-typed fields', async () => {
    const img = dataUri(await testImage());
    const cb = await api.create({ input: { prompt: 'x', image_urls: [img] }, callback_url: 'http://127.0.0.1:9/hook' });
    expect(cb.status).toBe(422);
    expect(fields(cb.body)).toEqual(['callback_url']);
    const shape = await api.create({ input: { image_urls: [img], seed: -1, output_format: 'gif' } });
    expect(shape.status).toBe(422);
    expect(fields(shape.body).sort()).toEqual(['input.output_format', 'input.prompt', 'input.seed']);
    const notJson = await fetch(`${srv.url}/v1/models/flux-2-klein-4b/edit/runs`, { method: 'POST', headers: api.headers(), body: '{oops' });
    expect(notJson.status).toBe(400);
    expect((await notJson.json()).code).toBe('BAD_REQUEST');
  });
});

describe('refusals in the preprocess stage (queued run fails, failure_stage_code preprocess)', () => {
  it('fails runs whose URL is too slow, too big, redirects too often or to loopback, or is not an image', async () => {
    const cases: [string, string, RegExp][] = [
      ['/slow.jpg', 'IMAGE_FETCH_FAILED', /timed out/],
      ['/big.jpg', 'IMAGE_FETCH_FAILED', /too large/],
      ['/chunked-big', 'IMAGE_FETCH_FAILED', /too large/],
      ['/chain', 'IMAGE_FETCH_FAILED', /too many redirects/],
      ['/to-loopback', 'IMAGE_FETCH_FAILED', /127\.0\.0\.1.*non-public/],
      ['/missing.jpg', 'IMAGE_FETCH_FAILED', /HTTP 404/],
      ['/page.html', 'INPUT_VALIDATION_FAILED', /./],
    ];
    const created = await Promise.all(
      cases.map(([p]) => api.create({ input: { prompt: 'x', image_urls: [`${base}/ok.jpg`, `${base}${p}`], steps: 1 } })),
    );
    for (const c of created) expect(c.status).toBe(200);
    for (const [i, [p, code, reason]] of cases.entries()) {
      const run = await api.waitTerminal(created[i].body.id, 30_000);
      expect(run.status_code, p).toBe('failed');
      expect(run.failure_stage_code, p).toBe('preprocess');
      expect(run.failure_code, p).toBe(code);
      expect(run.failure_message, p).toMatch(/^input\.image_urls\[1\]: /);
      expect(run.failure_message, p).toMatch(reason);
      // The run's error names the field and the reason apart, as a 422 would.
      expect(run.error).toEqual({ code, message: run.failure_message, field: 'input.image_urls[1]', reason: run.failure_message.slice('input.image_urls[1]: '.length) });
      expect(run.output).toBeNull();
    }
    expect(canaryHits).toEqual([]);
  });

  it('still serves good URL runs afterwards', async () => {
    const { body } = await api.create({ input: { prompt: 'fine', image_urls: [`${base}/ok.jpg`], steps: 1 } }, { prefer: 'wait' });
    expect(body.status_code).toBe('succeeded');
    expect((await srv.health()).ok).toBe(true);
  });
});
