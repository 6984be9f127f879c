// Several FLUX.2 [klein] models in one `serve` process, each on its own real engine: the tiny distilled model as
// flux-2-klein-4b and the tiny base model as flux-2-klein-base-4b (`--model flux-2-klein-base-4b=tiny-base`).
// Which engine ran a run shows in what each checkpoint accepts: a negative prompt runs on the base routes and is
// refused (422) on the distilled ones. A family model nobody serves here is a 404 naming it.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, startServer, waitFor, type ServerHandle } from '../helpers/server.ts';

vi.setConfig({ testTimeout: 180_000, hookTimeout: 300_000 });

const KEY = 'models_key';
const DISTILLED = 'black-forest-labs/flux-2-klein-4b';
const BASE = 'black-forest-labs/flux-2-klein-base-4b';
let srv: ServerHandle;
let api: Api;
let img: string;

beforeAll(async () => {
  img = dataUri(await testImage(64, 64));
  // Two engines load at once (and the base one builds its tiny checkpoint first): give them longer than one.
  srv = await startServer({ apiKeys: [KEY], args: ['--model', `flux-2-klein-base-4b=tiny-base`], waitReady: false });
  await waitFor(async () => (await srv.health()).ok === true, 280_000, 'both engines ready');
  api = new Api(srv.url, KEY);
});
afterAll(async () => {
  await srv?.dispose();
});

async function post(route: string, input: Record<string, unknown>, wait = true) {
  const res = await fetch(`${srv.url}/v1/models/${route}/runs`, {
    method: 'POST',
    headers: api.headers(wait ? { prefer: 'wait=120' } : {}),
    body: JSON.stringify({ input: { prompt: 'a lighthouse', seed: 5, steps: 2, output_format: 'png', ...input } }),
  });
  return { status: res.status, body: (await res.json()) as any };
}

describe('serve with two models', () => {
  it('reports each model’s engine in health, with its own checkpoint facts', async () => {
    const health = await srv.health();
    expect(health.status).toBe('ok');
    const models = health.engine.models;
    expect(Object.keys(models)).toEqual([DISTILLED, BASE]);
    expect(models[DISTILLED]).toMatchObject({ status: 'ready', model_info: { is_distilled: true, supports_guidance: false } });
    expect(models[BASE]).toMatchObject({ status: 'ready', model: 'tiny-base', model_info: { is_distilled: false, supports_guidance: true } });
    expect(models[DISTILLED].pid).not.toBe(models[BASE].pid);
    const ready = await fetch(`${srv.url}/v1/readiness`);
    expect(ready.status).toBe(200);
  });

  it('runs guided edits and text-to-image on the base routes (its engine); the distilled ones ignore guidance and refuse a negative prompt', async () => {
    const [edit, t2i, distilled, refused] = await Promise.all([
      post(`${BASE}/edit`, { image_urls: [img], guidance_scale: 3, negative_prompt: 'fog' }),
      post(BASE, { width: 64, height: 64, guidance_scale: 2.5 }),
      post(`${DISTILLED}/edit`, { image_urls: [img] }),
      post(`${DISTILLED}/edit`, { image_urls: [img], guidance_scale: 3, negative_prompt: 'fog' }),
    ]);
    expect(edit.body.status_code, JSON.stringify(edit.body)).toBe('succeeded');
    expect(edit.body.model_id).toBe(`${BASE}/edit`);
    expect(t2i.body.status_code, JSON.stringify(t2i.body)).toBe('succeeded');
    expect(t2i.body.model_id).toBe(BASE);
    expect(distilled.body.status_code, JSON.stringify(distilled.body)).toBe('succeeded');
    expect(distilled.body.model_id).toBe(`${DISTILLED}/edit`);
    expect(refused.status).toBe(422);
    expect(refused.body.errors.map((e: any) => e.field)).toEqual(['input.negative_prompt']);
    expect(refused.body.errors[0].reason).toContain('distilled');
  });

  it('defaults steps to each checkpoint’s own (50 base, 4 distilled)', async () => {
    const [base, distilled] = await Promise.all([post(`${BASE}/edit`, { image_urls: [img], steps: undefined }, false), post(`${DISTILLED}/edit`, { image_urls: [img], steps: undefined }, false)]);
    expect(base.body.input.steps).toBe(50);
    expect(distilled.body.input.steps).toBe(4);
    await api.cancel(base.body.id);
    await api.waitTerminal(distilled.body.id, 120_000);
  });

  it('resolves the short and the whole-URL-encoded ids to the same models', async () => {
    const short = await post('flux-2-klein-base-4b/edit', { image_urls: [img], guidance_scale: 2 });
    expect(short.body.status_code, JSON.stringify(short.body)).toBe('succeeded');
    expect(short.body.model_id).toBe(`${BASE}/edit`);
    const encoded = await post(encodeURIComponent(BASE), { width: 64, height: 64, guidance_scale: 2 });
    expect(encoded.body.status_code, JSON.stringify(encoded.body)).toBe('succeeded');
    expect(encoded.body.model_id).toBe(BASE);
    const encodedBad = await post(encodeURIComponent(`${BASE}/edit`), { guidance_scale: 2 });
    expect(encodedBad.status).toBe(422);
    expect(encodedBad.body.errors.map((e: any) => e.field)).toContain('input.image_urls');
  });

  it('answers 404 MODEL_NOT_SERVED, naming the model and what is served, for a family model not loaded here', async () => {
    for (const route of ['black-forest-labs/flux-2-klein-9b/edit', 'black-forest-labs/flux-2-klein-base-9b', 'flux-2-klein-9b']) {
      const res = await post(route, route.endsWith('edit') ? { image_urls: [img] } : {});
      expect(res.status, route).toBe(404);
      expect(res.body.code).toBe('MODEL_NOT_SERVED');
      expect(res.body.message).toContain(route.includes('base-9b') ? 'flux-2-klein-base-9b' : 'flux-2-klein-9b');
      expect(res.body.message).toContain(BASE);
    }
  });

  it('labels each engine’s metrics with its model and reports each engine’s state', async () => {
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    expect(text).toContain(`kleinserve_model_engine_state{model="${BASE}",state="ready"} 1`);
    expect(text).toContain(`kleinserve_model_engine_state{model="${DISTILLED}",state="ready"} 1`);
    const samples = text.split('\n').filter((l) => l.startsWith('kleinserve_engine_requests_total') || l.startsWith('kleinserve_engine_batch_size_count'));
    expect(samples.some((l) => l.includes(`model="${BASE}"`))).toBe(true);
    expect(samples.some((l) => l.includes(`model="${DISTILLED}"`))).toBe(true);
    // One HELP line per family even though two engines report it.
    const helps = text.split('\n').filter((l) => l.startsWith('# HELP kleinserve_engine_'));
    expect(new Set(helps).size).toBe(helps.length);
  });
});
