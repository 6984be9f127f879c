// LoRAs through the real server and the real engine on the tiny model: one from the operator's adapters
// directory, one from an http(s) URL, one by Hugging Face repo id (the hub endpoint pointed at a loopback
// server, allow-listed like any fetch), each changing the output; every refusal the control plane can know at
// submit time as a 422 naming input.loras[i]; the engine's own refusal (no module of this model matches) as a
// failed run naming the same field; a mixed batch; the disk cache in /metrics.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PYTHON } from '../global-setup.ts';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, startServer, tinyModelDir, tmpDir, type ServerHandle } from '../helpers/server.ts';

vi.setConfig({ testTimeout: 240_000, hookTimeout: 300_000 });

const KEY = 'lora_key';
/** Allow-listed stand-in for the public internet (adapter hosts and the hub); 127.0.0.1 stays forbidden. */
const PUBLIC = '127.0.0.2';
let srv: ServerHandle;
let api: Api;
let origin: http.Server;
let base: string;
let fx: Record<string, string>;
let work: string;
let image: string;
const hits: string[] = [];

const run = (cmd: string, args: string[]) =>
  new Promise<string>((resolve, reject) =>
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 20 }, (err, stdout, stderr) => (err ? reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.slice(-2000)}`)) : resolve(stdout))),
  );

beforeAll(async () => {
  work = tmpDir('ks-lora-');
  const checker = path.join(work, 'checker');
  const loraDir = path.join(work, 'loras');
  fs.mkdirSync(loraDir);
  await run(PYTHON, ['-m', 'kleinserve_engine', 'make-tiny-safety-checker', checker]);
  // The server starts while the LoRA files are written (its adapters directory is read per request).
  const [made] = await Promise.all([
    run(PYTHON, [path.join(import.meta.dirname, 'fixtures.py'), tinyModelDir(), work, '--no-checker']),
    startOrigin(),
  ]);
  fx = JSON.parse(made);
  expect(fx.lora_dir).toBe(loraDir);
  image = dataUri(await testImage(64, 64));
});

async function startOrigin() {
  const file = (p: string) => fs.readFileSync(p);
  origin = http.createServer((req, res) => {
    hits.push(req.url!);
    const send = (b: Buffer) => void res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(b);
    switch (req.url) {
      case '/adapters/style.safetensors':
        return send(file(fx.http));
      case '/adapters/rank160.safetensors':
        return send(file(fx.rank));
      case '/adapters/huge.safetensors':
        return send(Buffer.alloc(1024 * 1024 + 10, 0));
      case '/adapters/page.html':
        return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>not an adapter</html>');
      // The hub: model info, then resolve/main/<file> redirecting to its CDN, as huggingface.co does.
      case '/api/models/acme/klein-style':
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ siblings: [{ rfilename: 'README.md' }, { rfilename: 'klein_style.safetensors' }] }));
      case '/acme/klein-style/resolve/main/klein_style.safetensors':
        return void res.writeHead(302, { location: '/cdn/klein_style.safetensors' }).end();
      case '/cdn/klein_style.safetensors':
        return send(file(fx.hub));
      default:
        return void res.writeHead(404).end('not found');
    }
  });
  await new Promise<void>((r) => origin.listen(0, PUBLIC, r));
  base = `http://${PUBLIC}:${(origin.address() as AddressInfo).port}`;
  srv = await startServer({
    apiKeys: [KEY],
    args: ['--lora-dir', path.join(work, 'loras'), '--lora-max-mb', '1', '--safety-checker', path.join(work, 'checker'), '--safety-threshold', '1.01'],
    env: { KLEINSERVE_FETCH_ALLOWLIST: `${PUBLIC}/32`, KLEINSERVE_HF_ENDPOINT: base },
  });
  api = new Api(srv.url, KEY);
}
afterAll(async () => {
  await srv?.dispose();
  origin?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

const edit = (input: Record<string, unknown>, headers: Record<string, string> = {}) =>
  api.create({ input: { prompt: 'a fox', image_urls: [image], seed: 7, steps: 2, output_format: 'png', ...input } }, headers);

async function outputOf(body: any): Promise<Buffer> {
  const run = body.status_code === 'succeeded' ? body : await api.waitTerminal(body.id, 180_000);
  expect(run.status_code, JSON.stringify(run.error)).toBe('succeeded');
  return Buffer.from(await (await fetch(run.output.outputs[0].url)).arrayBuffer());
}

/** Largest per-channel pixel difference of two encoded images (batched vs alone may differ by 1/255). */
async function maxDiff(a: Buffer, b: Buffer): Promise<number> {
  const [x, y] = await Promise.all([a, b].map((i) => sharp(i).raw().toBuffer()));
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  return m;
}

const refusal = (body: any) => body.errors.map((e: any) => [e.field, e.reason.split(':')[0]]);

describe('LoRAs by source', () => {
  let plain: Buffer;
  beforeAll(async () => {
    plain = await outputOf((await edit({})).body);
  });

  it('applies a LoRA from the adapters directory, by name with or without .safetensors', async () => {
    const a = await edit({ loras: [{ path: 'style', scale: 1 }] });
    expect(a.status, JSON.stringify(a.body)).toBe(200);
    expect(a.body.input.loras).toEqual([{ path: 'style', scale: 1 }]);
    const out = await outputOf(a.body);
    expect(out.equals(plain)).toBe(false);
    const b = await outputOf((await edit({ loras: [{ path: 'style.safetensors', scale: 1 }] })).body);
    expect(b.equals(out)).toBe(true);
  });

  it('fetches a LoRA from an http URL under the fetch guard, then serves it from the cache', async () => {
    const url = `${base}/adapters/style.safetensors`;
    const before = hits.filter((h) => h === '/adapters/style.safetensors').length;
    const first = await outputOf((await edit({ loras: [{ path: url, scale: 0.8 }] })).body);
    const again = await outputOf((await edit({ loras: [{ path: url, scale: 0.8 }] })).body);
    expect(first.equals(plain)).toBe(false);
    expect(again.equals(first)).toBe(true);
    expect(hits.filter((h) => h === '/adapters/style.safetensors').length - before).toBe(1);
    const metrics = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
    expect(Number(/^kleinserve_lora_cache_hits_total (\S+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
    expect(Number(/^kleinserve_lora_cache_misses_total (\S+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
    expect(Number(/^kleinserve_lora_cache_bytes (\S+)/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    expect(metrics).toMatch(/^kleinserve_lora_cache_evictions_total /m);
  });

  it('resolves a Hugging Face repo id through the configured hub endpoint, with and without a file name', async () => {
    const byRepo = await outputOf((await edit({ loras: [{ path: 'acme/klein-style', scale: 1 }] })).body);
    expect(hits).toContain('/api/models/acme/klein-style');
    expect(byRepo.equals(plain)).toBe(false);
    const byFile = await outputOf((await edit({ loras: [{ path: 'acme/klein-style:klein_style.safetensors', scale: 1 }] })).body);
    expect(byFile.equals(byRepo)).toBe(true);
  });

  it('takes LoRAs on text-to-image, the flat route and the OpenAI JSON route', async () => {
    const t2i = await fetch(`${srv.url}/v1/models/black-forest-labs/flux-2-klein-4b/runs`, {
      method: 'POST',
      headers: api.headers({ prefer: 'wait=120' }),
      body: JSON.stringify({ input: { prompt: 'a fox', width: 64, height: 64, steps: 1, loras: [{ path: 'style', scale: 0.5 }] } }),
    });
    const run = (await t2i.json()) as any;
    expect(run.status_code, JSON.stringify(run)).toBe('succeeded');
    const flat = await fetch(`${srv.url}/v1/run/black-forest-labs/flux-2-klein-4b/edit`, {
      method: 'POST',
      headers: api.headers(),
      body: JSON.stringify({ prompt: 'a fox', image_urls: [image], steps: 1, loras: [{ path: 'nope', scale: 1 }] }),
    });
    expect(flat.status).toBe(422);
    expect(refusal(await flat.json())).toEqual([['input.loras[0].path', 'unreachable']]);
    const oa = await fetch(`${srv.url}/v1/images/generations`, {
      method: 'POST',
      headers: api.headers(),
      body: JSON.stringify({ prompt: 'a fox', size: '64x64', num_inference_steps: 1, loras: [{ path: 'style', scale: 1 }] }),
    });
    expect(oa.status, await oa.clone().text()).toBe(200);
    const bad = await fetch(`${srv.url}/v1/images/generations`, {
      method: 'POST',
      headers: api.headers(),
      body: JSON.stringify({ prompt: 'a fox', size: '64x64', loras: [{ path: 'style', scale: 9 }] }),
    });
    expect(bad.status).toBe(422);
  });
});

describe('refusals', () => {
  it('refuses at submit time with a 422 naming input.loras[i] and the reason', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ path: 'no-such-adapter', scale: 1 }, 'unreachable'],
      [{ path: `${base}/adapters/missing.safetensors`, scale: 1 }, 'unreachable'],
      [{ path: 'acme/missing', scale: 1 }, 'unreachable'],
      [{ path: `${base}/adapters/huge.safetensors`, scale: 1 }, 'too_large'],
      [{ path: 'notes', scale: 1 }, 'not_a_lora'],
      [{ path: `${base}/adapters/page.html`, scale: 1 }, 'not_a_lora'],
      [{ path: `${base}/adapters/rank160.safetensors`, scale: 1 }, 'rank_too_large'],
      [{ path: '../../etc/passwd', scale: 1 }, 'invalid'],
      [{ path: 'http://127.0.0.1:9/x.safetensors', scale: 1 }, 'not_allowed'],
    ];
    for (const [lora, reason] of cases) {
      const res = await edit({ loras: [{ path: 'style', scale: 1 }, lora] });
      expect(res.status, JSON.stringify(lora)).toBe(422);
      expect(res.body.code).toBe('INPUT_VALIDATION_FAILED');
      expect(refusal(res.body), JSON.stringify(res.body)).toEqual([['input.loras[1].path', reason]]);
    }
  });

  it('refuses a scale out of range and more than 3 LoRAs', async () => {
    const scale = await edit({ loras: [{ path: 'style', scale: 4.5 }] });
    expect(scale.status).toBe(422);
    expect(scale.body.errors.map((e: any) => e.field)).toEqual(['input.loras[0].scale']);
    const many = await edit({ loras: Array.from({ length: 4 }, () => ({ path: 'style', scale: 1 })) });
    expect(many.status).toBe(422);
    expect(many.body.errors.map((e: any) => e.field)).toEqual(['input.loras']);
  });

  it("fails the run naming the field when only the engine can tell (no module of this model matches)", async () => {
    const res = await edit({ loras: [{ path: 'style', scale: 1 }, { path: 'other', scale: 1 }] }, { prefer: 'wait=120' });
    expect(res.status).toBe(200);
    expect(res.body.status_code).toBe('failed');
    expect(res.body.failure_code).toBe('INPUT_VALIDATION_FAILED');
    expect(res.body.error).toMatchObject({ code: 'INPUT_VALIDATION_FAILED', field: 'input.loras[1].path' });
    expect(res.body.error.reason).toMatch(/^no_matching_module: /);
    // A route that holds the request answers the same refusal as a 422 naming the field.
    const flat = await fetch(`${srv.url}/v1/run/black-forest-labs/flux-2-klein-4b/edit`, {
      method: 'POST',
      headers: api.headers(),
      body: JSON.stringify({ prompt: 'a fox', image_urls: [image], steps: 1, loras: [{ path: 'other', scale: 1 }] }),
    });
    expect(flat.status).toBe(422);
    expect(refusal(await flat.json())).toEqual([['input.loras[0].path', 'no_matching_module']]);
  });
});

describe('every surface', () => {
  it('takes loras on the fal, Replicate and BFL routes too, as the same runs, with the same refusals', async () => {
    const auth = { authorization: `Key ${KEY}`, 'content-type': 'application/json' };
    const post = (path: string, body: unknown, headers: Record<string, string> = auth) =>
      fetch(`${srv.url}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
    const loras = [{ path: 'style', scale: 1 }];
    const fal = await post('/fal/queue/fal-ai/flux-2/klein/4b/edit', { prompt: 'a fox', image_urls: [image], num_inference_steps: 1, loras });
    const replicate = await post('/v1/models/black-forest-labs/flux-2-klein-4b/predictions', { input: { prompt: 'a fox', images: [image], loras } });
    const bfl = await post('/v1/flux-2-klein-4b', { prompt: 'a fox', input_image: image, loras }, { 'x-key': KEY, 'content-type': 'application/json' });
    const ids = [(await fal.json()).request_id, (await replicate.json()).id, (await bfl.json()).id];
    for (const id of ids) {
      const run = await api.waitTerminal(id, 180_000);
      expect(run.status_code, JSON.stringify(run.error)).toBe('succeeded');
      expect(run.input.loras).toEqual([{ path: 'style', scale: 1 }]);
    }
    const missing = [{ path: 'missing', scale: 1 }];
    const refusals = await Promise.all([
      post('/fal/queue/fal-ai/flux-2/klein/4b/edit', { prompt: 'a fox', image_urls: [image], loras: missing }),
      post('/v1/models/black-forest-labs/flux-2-klein-4b/predictions', { input: { prompt: 'a fox', images: [image], loras: missing } }),
      post('/v1/flux-2-klein-4b', { prompt: 'a fox', input_image: image, loras: missing }, { 'x-key': KEY, 'content-type': 'application/json' }),
    ]);
    for (const r of refusals) {
      expect(r.status).toBe(422);
      expect(JSON.stringify(await r.json())).toMatch(/loras\[0\]\.path/);
    }
  });
});

describe('batches and the rest of the input', () => {
  it('completes a batch that mixes runs with different LoRAs and none, each as it would alone', async () => {
    const variants = [[], [{ path: 'style', scale: 1 }], [], [{ path: `${base}/adapters/style.safetensors`, scale: 0.5 }, { path: 'style', scale: 0.3 }]];
    const alone = await outputOf((await edit({ loras: variants[1] })).body);
    const created = await Promise.all(variants.map((loras) => edit({ loras })));
    const outs = await Promise.all(created.map((c) => outputOf(c.body)));
    // The engine's bound for batched vs alone (engine/README.md): 1/255.
    expect(await maxDiff(outs[1], alone)).toBeLessThanOrEqual(1);
    expect(await maxDiff(outs[0], outs[2])).toBeLessThanOrEqual(1);
    expect(await maxDiff(outs[3], outs[0])).toBeGreaterThan(8);
    expect(await maxDiff(outs[1], outs[0])).toBeGreaterThan(8);
  });

  it('accepts and ignores guidance_scale on the distilled checkpoint, and refuses a negative prompt at submit time', async () => {
    // Provider clients send guidance_scale for every klein checkpoint; a distilled one has no guidance pass.
    const guided = await edit({ guidance_scale: 3.5 });
    const run = guided.body.status_code === 'succeeded' ? guided.body : await api.waitTerminal(guided.body.id, 180_000);
    expect(run.input.guidance_scale).toBe(3.5);
    const plain = await outputOf((await edit({})).body);
    expect(await maxDiff(await outputOf(run), plain)).toBe(0);
    const n = await edit({ negative_prompt: 'blurry' });
    expect(n.status).toBe(422);
    expect(n.body.errors.map((e: any) => e.field)).toEqual(['input.negative_prompt']);
    // Without steps, the checkpoint's own default applies (4 on a distilled one).
    const ok = await api.create({ input: { prompt: 'a fox', image_urls: [image], guidance_scale: 1 } }, { prefer: 'wait=120' });
    expect(ok.body.status_code).toBe('succeeded');
    expect(ok.body.input.steps).toBe(4);
  });

  it('reports nsfw_detected false when the checker runs and flags nothing (threshold above 1)', async () => {
    const res = await edit({}, { prefer: 'wait=120' });
    expect(res.body.status_code).toBe('succeeded');
    expect(res.body.output.nsfw_detected).toBe(false);
    // It did run: the engine counts every image its checker classified.
    const metrics = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
    expect(Number(/^kleinserve_engine_safety_checks_total (\S+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
  });
});
