// Guidance and the safety checker through the real server and the real engine: classifier-free guidance and a
// negative prompt on the tiny base checkpoint (honoured, and bounded by its facts at submit time); the tiny
// random safety checker at threshold 0 (every output flagged) under the blur policy (nsfw_detected) and the
// fail policy (the run fails NSFW_CONTENT), and a caller's opt-out refused or honoured as the operator set it.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PYTHON } from '../global-setup.ts';
import { Api, startServer, tinyModelDir, tmpDir, type ServerHandle } from '../helpers/server.ts';

vi.setConfig({ testTimeout: 240_000, hookTimeout: 300_000 });

const KEY = 'guidance_key';
let work: string;
/** A base checkpoint with a blurring checker, and a distilled one with a failing checker that allows opting out. */
let base: ServerHandle;
let distilled: ServerHandle;

beforeAll(async () => {
  work = tmpDir('ks-guidance-');
  const fx = JSON.parse(execFileSync(PYTHON, [path.join(import.meta.dirname, 'fixtures.py'), tinyModelDir(), work, '--base', '--no-loras'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
  // Both start at once: most of a start is waiting on one process or the other.
  [base, distilled] = await Promise.all([
    startServer({ apiKeys: [KEY], model: fx.base, args: ['--safety-checker', fx.checker, '--safety-policy', 'blur', '--safety-threshold', '0'] }),
    startServer({
      apiKeys: [KEY],
      args: ['--safety-checker', fx.checker, '--safety-policy', 'fail', '--safety-threshold', '0', '--allow-safety-opt-out'],
    }),
  ]);
});
afterAll(async () => {
  await Promise.all([base?.dispose(), distilled?.dispose()]);
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

const textToImage = (api: Api, input: Record<string, unknown>) =>
  fetch(`${api.url}/v1/models/black-forest-labs/flux-2-klein-4b/runs`, {
    method: 'POST',
    headers: api.headers({ prefer: 'wait=120' }),
    body: JSON.stringify({ input: { prompt: 'a lighthouse', width: 64, height: 64, seed: 3, output_format: 'png', ...input } }),
  }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));

const bytesOf = async (run: any) => Buffer.from(await (await fetch(run.output.outputs[0].url)).arrayBuffer());

describe('a base checkpoint with a blurring checker', () => {
  let srv: ServerHandle;
  let api: Api;
  beforeAll(() => {
    srv = base;
    api = new Api(srv.url, KEY);
  });

  it('honours guidance_scale and negative_prompt, and defaults steps to the checkpoint’s', async () => {
    const guided = await textToImage(api, { steps: 2, guidance_scale: 3, negative_prompt: 'fog' });
    expect(guided.body.status_code, JSON.stringify(guided.body)).toBe('succeeded');
    expect(guided.body.input).toMatchObject({ guidance_scale: 3, negative_prompt: 'fog' });
    const unguided = await textToImage(api, { steps: 2, guidance_scale: 1 });
    const otherNegative = await textToImage(api, { steps: 2, guidance_scale: 3, negative_prompt: 'rain' });
    const [g, u, o] = await Promise.all([guided, unguided, otherNegative].map((r) => bytesOf(r.body)));
    expect(g.equals(u)).toBe(false);
    expect(g.equals(o)).toBe(false);
    const defaults = await textToImage(api, {});
    expect(defaults.body.status_code).toBe('succeeded');
    expect(defaults.body.input.steps).toBe(50);
  });

  it('refuses guidance outside the base range and a negative prompt without guidance (422 naming the field)', async () => {
    const low = await textToImage(api, { guidance_scale: 0.5 });
    expect(low.status).toBe(422);
    expect(low.body.errors.map((e: any) => e.field)).toEqual(['input.guidance_scale']);
    const high = await textToImage(api, { guidance_scale: 25 });
    expect(high.status).toBe(422);
    expect(high.body.errors.map((e: any) => e.field)).toEqual(['input.guidance_scale']);
    const neg = await textToImage(api, { guidance_scale: 1, negative_prompt: 'fog' });
    expect(neg.status).toBe(422);
    expect(neg.body.errors.map((e: any) => e.field)).toEqual(['input.negative_prompt']);
  });

  it('flags every output at threshold 0 (nsfw_detected, has_nsfw_concepts) and refuses an opt-out', async () => {
    const run = await textToImage(api, { steps: 1 });
    expect(run.body.status_code).toBe('succeeded');
    expect(run.body.output.nsfw_detected).toBe(true);
    const flat = await fetch(`${srv.url}/v1/run/black-forest-labs/flux-2-klein-4b`, {
      method: 'POST',
      headers: api.headers(),
      body: JSON.stringify({ prompt: 'a lighthouse', width: 64, height: 64, steps: 1 }),
    });
    expect(((await flat.json()) as any).has_nsfw_concepts).toEqual([true]);
    for (const optOut of [{ enable_safety_checker: false }, { disable_safety_checker: true }]) {
      const res = await textToImage(api, { steps: 1, ...optOut });
      expect(res.status).toBe(422);
      expect(res.body.errors).toEqual([{ field: 'input.enable_safety_checker', reason: expect.stringMatching(/does not let requests/) }]);
    }
  });
});

describe('a distilled checkpoint with a failing checker that allows opting out', () => {
  let api: Api;
  beforeAll(() => {
    api = new Api(distilled.url, KEY);
  });

  it('fails a flagged run with NSFW_CONTENT, visible to a Prefer: wait caller', async () => {
    const run = await textToImage(api, { steps: 1 });
    expect(run.status).toBe(200);
    expect(run.body).toMatchObject({ status_code: 'failed', failure_code: 'NSFW_CONTENT', output: null });
    expect(run.body.error.code).toBe('NSFW_CONTENT');
  });

  it('lets a caller opt out where the operator allows it: nothing is checked, nothing flagged', async () => {
    const run = await textToImage(api, { steps: 1, disable_safety_checker: true });
    expect(run.body.status_code, JSON.stringify(run.body)).toBe('succeeded');
    expect(run.body.output.nsfw_detected).toBe(false);
    expect(run.body.input.enable_safety_checker).toBe(false);
  });
});
