// The server's extra surfaces against the REAL server + tiny engine: SSE progress, OpenAI-compatible routes
// (driven by the official `openai` package), text-to-image, fal/Replicate aliases, sync_mode, the playground route.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import OpenAI, { toFile } from 'openai';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Api, startServer, type ServerHandle } from '../helpers/server.ts';
import { dataUri, testImage } from '../helpers/images.ts';

const KEY = 'ks_test_surfaces';
let server: ServerHandle;
let api: Api;

beforeAll(async () => {
  server = await startServer({ apiKeys: [KEY] });
  api = new Api(server.url, KEY);
});
afterAll(async () => server?.stop());

interface SseFrame { event: string; data: any }

/** Reads a whole SSE response into frames (the stream ends after the terminal `run` event). */
async function readSse(res: Response): Promise<SseFrame[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .filter((block) => block.split('\n').some((l) => l.startsWith('data:')))
    .map((block) => {
      const lines = block.split('\n');
      const event = lines.find((l) => l.startsWith('event:'))?.slice(6).trim() ?? 'message';
      const data = JSON.parse(lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n'));
      return { event, data };
    });
}

const events = (id: string, key = KEY) =>
  fetch(`${server.url}/v1/runs/${id}/events`, { headers: { authorization: `Bearer ${key}`, accept: 'text/event-stream' } });

describe('GET /v1/runs/:id/events (SSE)', () => {
  it('streams status changes, every engine step n/N with its timing, then the terminal run', async () => {
    const img = dataUri(await testImage(256, 192));
    const created = await api.create({ input: { prompt: 'sse', image_urls: [img], steps: 8, seed: 3 } });
    expect(created.status).toBe(200);
    const res = await events(created.body.id);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const frames = await readSse(res);

    const last = frames.at(-1)!;
    expect(last.event).toBe('run');
    expect(last.data.id).toBe(created.body.id);
    expect(last.data.status_code).toBe('succeeded');
    expect(last.data.output.outputs).toHaveLength(1);

    const statuses = frames.filter((f) => f.event === 'status').map((f) => f.data.status);
    expect(statuses.at(-1)).toBe('succeeded');
    expect(statuses).toContain('running');

    const progress = frames.filter((f) => f.event === 'progress').map((f) => f.data);
    expect(progress.length).toBeGreaterThan(0);
    for (const p of progress) {
      expect(p.run_id).toBe(created.body.id);
      expect(p.steps).toBe(8);
      expect(p.step_ms).toBeGreaterThan(0);
    }
    expect(progress.map((p) => p.step)).toEqual([...progress.map((p) => p.step)].sort((a, b) => a - b));
    expect(progress.at(-1)!.step).toBe(8);
    // Subscribed before the engine started: every step arrives, and progress sits between running and the end.
    if (statuses[0] === 'queued' || statuses[0] === 'dispatching') expect(progress.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    const kinds = frames.map((f) => (f.event === 'status' ? f.data.status : f.event));
    expect(kinds.indexOf('progress')).toBeGreaterThan(kinds.indexOf('running'));
    expect(kinds.lastIndexOf('progress')).toBeLessThan(kinds.indexOf('succeeded'));
  });

  it('answers a finished run at once, 404 for an unknown run, 401 without a key', async () => {
    const img = dataUri(await testImage(96, 64));
    const done = await api.create({ input: { prompt: 'done', image_urls: [img], steps: 1 } }, { prefer: 'wait=30' });
    expect(done.body.status_code).toBe('succeeded');
    const frames = await readSse(await events(done.body.id));
    expect(frames.map((f) => f.event)).toEqual(['status', 'run']);
    expect(frames[1].data.status_code).toBe('succeeded');

    const missing = await events('01a20c1d-0000-7000-8000-000000000000');
    expect(missing.status).toBe(404);
    expect((await missing.json()).code).toBe('RUN_NOT_FOUND');
    expect((await events(done.body.id, 'wrong_key')).status).toBe(401);
  });
});

describe('OpenAI-compatible images (official openai package)', () => {
  const client = () => new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });

  it('images.edit with two files and n=2 answers b64 images from ONE batched run', async () => {
    const a = await toFile(await testImage(128, 128, 'png'), 'a.png', { type: 'image/png' });
    const b = await toFile(await testImage(96, 96, 'jpeg'), 'b.jpg', { type: 'image/jpeg' });
    const { data: res, response } = await client()
      .images.edit({ model: 'flux-2-klein-4b', image: [a, b], prompt: 'merge them', n: 2, size: '128x128' as never, response_format: 'b64_json', seed: 11, num_inference_steps: 2 } as never)
      .withResponse();
    expect(res.data).toHaveLength(2);
    for (const d of res.data!) {
      const meta = await sharp(Buffer.from(d.b64_json!, 'base64')).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 128, 128]);
    }
    const runId = response.headers.get('x-kleinserve-run-id')!;
    const run = (await (await fetch(`${server.url}/v1/runs/${runId}`, { headers: api.headers() })).json()) as any;
    expect(run.output.outputs).toHaveLength(2);
    expect(run.input.image_urls).toHaveLength(2);
    expect(run.input.steps).toBe(2);
    expect(run.output.seed).toBe(11);
  });

  it('images.generate (text-to-image) answers a URL to a real image', async () => {
    const res = await client().images.generate({ model: 'flux-2-klein-4b', prompt: 'a red square', size: '192x128' as never, response_format: 'url', num_inference_steps: 2 } as never);
    expect(res.data).toHaveLength(1);
    const img = await fetch(res.data![0].url!);
    expect(img.status).toBe(200);
    const meta = await sharp(Buffer.from(await img.arrayBuffer())).metadata();
    expect([meta.width, meta.height]).toEqual([192, 128]);
  });

  it('refusals reach the openai SDK as APIError naming the image at fault', async () => {
    const good = await toFile(await testImage(96, 96, 'png'), 'ok.png', { type: 'image/png' });
    const tiny = await toFile(await testImage(8, 8, 'png'), 'tiny.png', { type: 'image/png' });
    const err = await client().images.edit({ image: [good, tiny], prompt: 'x' } as never).catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err.status).toBe(422);
    expect(err.message).toContain('image[1]');
    const bad = await client().images.generate({ prompt: 'x', size: '100x100' as never }).catch((e) => e);
    expect(bad.status).toBe(422);
    expect(bad.message).toMatch(/size/);
    const unknown = await client().images.generate({ prompt: 'x', colour: 'red' } as never).catch((e) => e);
    expect(unknown.status).toBe(422);
    expect(unknown.message).toContain('colour');
  });
});

describe('text-to-image run route and input aliases', () => {
  const t2i = (body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${server.url}/v1/models/black-forest-labs/flux-2-klein-4b/runs`, { method: 'POST', headers: api.headers(headers), body: JSON.stringify(body) });

  it('runs text-to-image on the same lifecycle with an image_size preset and num_images', async () => {
    const res = await t2i({ input: { prompt: 'a lighthouse', image_size: 'square', num_images: 2, num_inference_steps: 2, seed: 5 } }, { prefer: 'wait=60' });
    expect(res.status).toBe(200);
    const run = (await res.json()) as any;
    expect(run.model_id).toBe('black-forest-labs/flux-2-klein-4b');
    expect(run.status_code).toBe('succeeded');
    expect(run.output.outputs.map((o: any) => [o.width, o.height])).toEqual([[512, 512], [512, 512]]);
    expect(run.input.image_urls).toEqual([]);
  });

  it('a repeated create with the same Idempotency-Key returns the first run; the same client_ref alone makes another', async () => {
    const body = { input: { prompt: 'once', width: 64, height: 64, steps: 1 }, client_ref: `t2i_${Date.now()}` };
    const key = { 'idempotency-key': `t2i_${Date.now()}` };
    const first = (await (await t2i(body, key)).json()) as any;
    const again = await t2i(body, key);
    expect(again.status).toBe(200);
    expect(((await again.json()) as any).id).toBe(first.id);
    const tagged = (await (await t2i(body)).json()) as any;
    expect(tagged.id).not.toBe(first.id);
    expect(tagged.client_ref).toBe(body.client_ref);
  });

  it('sync_mode answers with data URIs; aspect_ratio + output_megapixels pick the size', async () => {
    const run = (await (await t2i({ input: { prompt: 'wide', aspect_ratio: '16:9', output_megapixels: 0.0625, steps: 1, sync_mode: true } })).json()) as any;
    expect(run.status_code).toBe('succeeded');
    const out = run.output.outputs[0];
    expect([out.width, out.height]).toEqual([336, 192]);
    expect(out.url).toMatch(/^data:image\/jpeg;base64,/);
    const meta = await sharp(Buffer.from(out.url.split(',')[1], 'base64')).metadata();
    expect([meta.width, meta.height]).toEqual([336, 192]);
  });

  it('accepts fal/Replicate aliases on the edit route and still names unknown fields', async () => {
    const img = dataUri(await testImage(160, 96));
    const ok = await api.create({ input: { prompt: 'alias', image_urls: [img], num_inference_steps: 2, num_images: 2, image_size: { width: 128, height: 96 } } }, { prefer: 'wait=60' });
    expect(ok.status).toBe(200);
    expect(ok.body.input.steps).toBe(2);
    expect(ok.body.output.outputs.map((o: any) => [o.width, o.height])).toEqual([[128, 96], [128, 96]]);

    const bad = await api.create({ input: { prompt: 'x', image_urls: [img], num_images: 9, colour: 'red', image_size: 'giant' } });
    expect(bad.status).toBe(422);
    const fields = bad.body.errors.map((e: any) => e.field);
    expect(fields).toEqual(expect.arrayContaining(['input.num_images', 'input.colour', 'input.image_size']));
  });
});

describe('playground route', () => {
  it('serves the built page at / without a key, with immutable hashed assets', async () => {
    const page = await fetch(`${server.url}/`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('kleinserve');
    const js = /src="(\/assets\/[^"]+\.js)"/.exec(html)![1];
    const asset = await fetch(`${server.url}${js}`);
    expect(asset.status).toBe(200);
    expect(asset.headers.get('cache-control')).toContain('immutable');
  });
});

describe('kleinserve edit (CLI)', () => {
  const BIN = path.resolve(import.meta.dirname, '../../bin/kleinserve.mjs');
  const cli = (args: string[]) => promisify(execFile)(process.execPath, [BIN, 'edit', '--server', server.url, '--api-key', KEY, ...args]);

  it('batch-edits a directory and a glob, writing outputs next to inputs with a suffix, with an SSE-driven bar', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-cli-'));
    fs.mkdirSync(path.join(dir, 'more'));
    fs.writeFileSync(path.join(dir, 'a.jpg'), await testImage(96, 64));
    fs.writeFileSync(path.join(dir, 'b.png'), await testImage(64, 96, 'png'));
    fs.writeFileSync(path.join(dir, 'more', 'c.webp'), await testImage(80, 80, 'webp'));
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'not an image');
    const { stdout, stderr } = await cli(['--prompt', 'batch', '--steps', '2', dir, `${dir}/**/*.webp`]);
    expect(stdout).toContain('3 of 3 edited');
    expect(stderr).toMatch(/step 2\/2/);
    for (const [out, fmt] of [['a.edited.jpg', 'jpeg'], ['b.edited.png', 'png'], ['more/c.edited.webp', 'webp']]) {
      const meta = await sharp(path.join(dir, out)).metadata();
      expect(meta.format).toBe(fmt);
    }
    // A second pass skips what the first one wrote.
    const again = await cli(['--prompt', 'batch', '--steps', '1', dir]);
    expect(again.stdout).toContain('2 of 2 edited');
    expect(fs.existsSync(path.join(dir, 'a.edited.edited.jpg'))).toBe(false);
  });
});
