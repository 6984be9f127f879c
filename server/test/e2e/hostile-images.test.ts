// The hostile-image corpus posted to the REAL server with the REAL engine on the tiny
// model: every hostile input gets a 422 naming it, in bounded time, the accepted ones run, and the
// server stays healthy and small. Also the SSRF refusals as the API reports them.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateCorpus, type CorpusManifest } from '../../scripts/hostile-corpus.ts';
import { testImage, dataUri } from '../helpers/images.ts';
import { Api, startServer, tmpDir, type ServerHandle } from '../helpers/server.ts';

const KEY = 'hostile_images_key';
/** Stands in for the public internet: allow-listed, unlike the canary on 127.0.0.1. */
const PUBLIC = '127.0.0.2';
const MIME: Record<string, string> = { '.jpg': 'image/jpeg', '.webp': 'image/webp', '.gif': 'image/gif', '.avif': 'image/avif', '.tiff': 'image/tiff' };

let server: ServerHandle;
let api: Api;
let dir: string;
let manifest: CorpusManifest;
let good: string;
let canaryHits: string[] = [];
let canary: Server;
let origin: Server;

const listen = (s: Server, host: string) =>
  new Promise<number>((resolve) => s.listen(0, host, () => resolve((s.address() as AddressInfo).port)));

function rssKiB(pid: number): number {
  const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'))!;
  return Number(line.split(/\s+/)[1]);
}

beforeAll(async () => {
  dir = tmpDir('ks-corpus-');
  manifest = await generateCorpus(dir);
  good = dataUri(await testImage(96, 64));
  canary = createServer((req, res) => {
    canaryHits.push(req.url ?? '');
    res.end('secret');
  });
  const canaryPort = await listen(canary, '127.0.0.1');
  origin = createServer((_req, res) => res.writeHead(302, { location: `http://127.0.0.1:${canaryPort}/latest/meta-data/` }).end());
  await listen(origin, PUBLIC);
  server = await startServer({ apiKeys: [KEY], env: { KLEINSERVE_FETCH_ALLOWLIST: `${PUBLIC}/32` } });
  api = new Api(server.url, KEY);
});

afterAll(async () => {
  await server?.stop();
  canary?.close();
  origin?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** The hostile value goes second, so the error must name input.image_urls[1], not just "an image". */
async function submit(hostile: string, prefer?: string) {
  const started = performance.now();
  const res = await api.create({ input: { prompt: 'hostile input', image_urls: [good, hostile], steps: 1 } }, prefer ? { prefer } : {});
  return { ...res, ms: performance.now() - started };
}

function expectRefusal(res: { status: number; body: any; ms: number }, reason: string, label: string) {
  expect(res.status, `${label}: ${JSON.stringify(res.body).slice(0, 300)}`).toBe(422);
  expect(res.body.code).toBe('INPUT_VALIDATION_FAILED');
  expect(res.body.errors, label).toEqual([{ field: 'input.image_urls[1]', reason: expect.stringMatching(new RegExp(reason)) }]);
  expect(res.ms, label).toBeLessThan(5000);
}

describe('hostile images against the real server', () => {
  it('answers every refused corpus file with a 422 naming the input, and stays small', async () => {
    const rssBefore = rssKiB(server.proc.pid!);
    for (const entry of manifest.files.filter((f) => f.expect === 'refuse')) {
      const bytes = fs.readFileSync(path.join(dir, entry.file));
      // Whatever the file really is, it is sent as an image (SVG, HTML and text included).
      const mime = MIME[path.extname(entry.file)] ?? 'image/png';
      expectRefusal(await submit(dataUri(bytes, mime)), entry.reason!, entry.file);
    }
    expect((await server.health()).ok).toBe(true);
    expect(rssKiB(server.proc.pid!) - rssBefore).toBeLessThan(300 * 1024);
  });

  it('refuses every hostile source string with a 422 naming the input', async () => {
    for (const src of manifest.sources) {
      const value = fs.readFileSync(path.join(dir, src.file), 'utf8');
      expectRefusal(await submit(value), src.reason, src.file);
    }
    expect((await server.health()).ok).toBe(true);
  });

  it('refuses a URL to 127.0.0.1 and its numeric spellings at submit time', async () => {
    for (const url of ['http://127.0.0.1/', 'http://2130706433/', 'http://0x7f.1/', 'http://[::1]/', 'http://169.254.169.254/']) {
      expectRefusal(await submit(url), 'non-public address', url);
    }
    expect(canaryHits).toEqual([]);
  });

  it('fails a run whose allowed URL redirects to 127.0.0.1 at the preprocess stage, without reaching it', async () => {
    const port = (origin.address() as AddressInfo).port;
    const { status, body } = await submit(`http://${PUBLIC}:${port}/img.png`);
    expect(status).toBe(200);
    const run = await api.waitTerminal(body.id, 30_000);
    expect(run.status_code).toBe('failed');
    expect(run.failure_stage_code).toBe('preprocess');
    expect(run.failure_message).toMatch(/input\.image_urls\[1\].*127\.0\.0\.1 is a non-public address \(loopback\)/);
    expect(canaryHits).toEqual([]);
  });

  it('accepts the convertible files (CMYK, 16-bit, palette, alpha, animated, grayscale) and runs them', async () => {
    const accepted = manifest.files.filter((f) => f.expect === 'accept');
    // Four references per run (the contract's maximum) keeps this to a few engine runs on 2 cores.
    for (let i = 0; i < accepted.length; i += 4) {
      const group = accepted.slice(i, i + 4);
      const image_urls = group.map((e) => dataUri(fs.readFileSync(path.join(dir, e.file)), MIME[path.extname(e.file)] ?? 'image/png'));
      const label = group.map((e) => e.file).join(', ');
      const res = await api.create({ input: { prompt: 'convert me', image_urls, steps: 1 } }, { prefer: 'wait=60' });
      expect(res.status, `${label}: ${JSON.stringify(res.body).slice(0, 300)}`).toBe(200);
      expect(res.body.status_code, label).toBe('succeeded');
    }
    expect((await server.health()).ok).toBe(true);
  });
});
