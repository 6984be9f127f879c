// The engine's LoRA limits set from `kleinserve serve`: the real server and engine on the tiny model with
// --lora-max-rank 4 and --lora-host-cache-mb 0. The engine reports the rank limit it was started with, a rank-8
// adapter is refused through the API as rank_too_large against that limit while a rank-4 one runs, and the engine
// keeps no converted adapter in host memory (every run misses its host cache).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PYTHON } from '../global-setup.ts';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, startServer, tinyModelDir, tmpDir, type ServerHandle } from '../helpers/server.ts';

vi.setConfig({ testTimeout: 240_000, hookTimeout: 300_000 });

const KEY = 'lora_limits_key';
let srv: ServerHandle;
let api: Api;
let work: string;
let image: string;

beforeAll(async () => {
  work = tmpDir('ks-lora-limits-');
  const made = await new Promise<string>((resolve, reject) =>
    execFile(PYTHON, [`${import.meta.dirname}/fixtures.py`, tinyModelDir(), work, '--no-checker'], { encoding: 'utf8' }, (err, stdout, stderr) =>
      err ? reject(new Error(stderr.slice(-2000))) : resolve(stdout),
    ),
  );
  const fx = JSON.parse(made);
  image = dataUri(await testImage(64, 64));
  srv = await startServer({ apiKeys: [KEY], args: ['--lora-dir', fx.lora_dir, '--lora-max-rank', '4', '--lora-host-cache-mb', '0'] });
  api = new Api(srv.url, KEY);
});
afterAll(async () => {
  await srv?.dispose();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

const edit = (loras: unknown[], headers: Record<string, string> = {}) =>
  api.create({ input: { prompt: 'a fox', image_urls: [image], seed: 7, steps: 1, loras } }, headers);

const metric = (text: string, name: string, tier: string) =>
  Number(new RegExp(`^${name}\\{[^}]*tier="${tier}"[^}]*\\} (\\S+)`, 'm').exec(text)?.[1] ?? 0);

describe('engine LoRA limits from serve', () => {
  it('reports the rank limit the engine was started with', async () => {
    expect((await srv.health()).engine.limits.max_lora_rank).toBe(4);
  });

  it('refuses a rank-8 adapter as rank_too_large against that limit, and runs a rank-4 one', async () => {
    const refused = await edit([{ path: 'rank8', scale: 1 }]);
    expect(refused.status, JSON.stringify(refused.body)).toBe(422);
    expect(refused.body.code).toBe('INPUT_VALIDATION_FAILED');
    expect(refused.body.errors).toHaveLength(1);
    expect(refused.body.errors[0].field).toBe('input.loras[0].path');
    expect(refused.body.errors[0].reason).toMatch(/^rank_too_large: rank 8 exceeds .*limit of 4$/);
    const ran = await edit([{ path: 'style', scale: 1 }], { prefer: 'wait=120' });
    const run = ran.body.status_code === 'succeeded' ? ran.body : await api.waitTerminal(ran.body.id, 180_000);
    expect(run.status_code, JSON.stringify(run.error)).toBe('succeeded');
  });

  it('keeps no converted adapter in the engine’s host cache (--lora-host-cache-mb 0)', async () => {
    const again = await edit([{ path: 'style', scale: 1 }], { prefer: 'wait=120' });
    expect(again.body.status_code, JSON.stringify(again.body.error)).toBe('succeeded');
    const text = await (await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
    expect(metric(text, 'kleinserve_engine_lora_cache_misses_total', 'host')).toBeGreaterThanOrEqual(2);
    expect(metric(text, 'kleinserve_engine_lora_cache_hits_total', 'host')).toBe(0);
    expect(text).toMatch(/^kleinserve_engine_lora_cache_entries\{[^}]*tier="host"[^}]*\} 0(\.0)?$/m);
  });
});
