// Cluster placement by model: each worker advertises the model it serves and consumes only that model's queue.
// One region, a worker serving the tiny base model as flux-2-klein-base-4b: its runs (guidance included) run
// there; a flux-2-klein-4b run is refused with 429 by an api under backpressure "reject" and parked (never
// claimed, never sent to the base worker) by one under "queue", until a worker serving 4B joins and runs it.
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, tmpDir, waitFor } from '../helpers/server.ts';
import { API_KEY, RedisServer, sleep, startApi, startWorker, TestDatabase, type ApiProc, type Proc } from './harness.ts';

const DISTILLED = 'black-forest-labs/flux-2-klein-4b';
const BASE = 'black-forest-labs/flux-2-klein-base-4b';

let db: TestDatabase;
let redis: RedisServer;
let storageDir: string;
let rejecting: ApiProc;
let queueing: ApiProc;
const workers: (Proc & { id: string })[] = [];
let image: string;

const post = (api: ApiProc, route: string, input: Record<string, unknown>, prefer?: string) =>
  fetch(`${api.url}/v1/models/${route}/runs`, {
    method: 'POST',
    headers: new Api(api.url, API_KEY).headers(prefer ? { prefer } : {}),
    body: JSON.stringify({ input: { prompt: 'a harbour', image_urls: [image], steps: 1, seed: 9, ...input } }),
  }).then(async (r) => ({ status: r.status, headers: r.headers, body: (await r.json()) as any }));

const health = async (api: ApiProc) => (await (await fetch(`${api.url}/v1/health`)).json()) as any;
const row = async (id: string) => (await db.query('SELECT status, region, attempts, worker FROM runs WHERE id = $1', [id])).rows[0];

beforeAll(async () => {
  image = dataUri(await testImage(64, 64, 'png'), 'image/png');
  storageDir = tmpDir('ks-models-objects-');
  const storage = `file:${storageDir}`;
  [db, redis] = await Promise.all([TestDatabase.create('ks_models'), RedisServer.start()]);
  const env = { KLEINSERVE_MAX_CONCURRENT_RUNS: '0', KLEINSERVE_RUNS_PER_MINUTE: '0' };
  [rejecting, queueing] = await Promise.all([
    startApi({ db, regions: [['a', redis]], storage, env }),
    startApi({ db, regions: [['a', redis]], storage, env, args: ['--backpressure', 'queue'] }),
  ]);
  workers.push(await startWorker({ db, region: 'a', redis, storage, model: 'flux-2-klein-base-4b=tiny-base', concurrency: 2 }));
  await waitFor(async () => (await health(rejecting)).engine.models?.[BASE]?.workers === 1, 280_000, 'the base worker live');
}, 300_000);

afterAll(async () => {
  await Promise.all([rejecting, queueing, ...workers].map((p) => p?.stop().catch(() => {})));
  await redis?.down();
  await db?.drop();
  if (storageDir) fs.rmSync(storageDir, { recursive: true, force: true });
});

describe('runs go only to workers that serve their model', () => {
  it('reports per model which workers serve it, with the checkpoint facts from their heartbeats', async () => {
    const models = (await health(rejecting)).engine.models;
    expect(models[BASE]).toMatchObject({ status: 'ready', workers: 1, model_info: { is_distilled: false, supports_guidance: true } });
    expect(models[DISTILLED]).toMatchObject({ status: 'starting', workers: 0 });
  });

  it('runs a base-model run (with guidance) on the base worker', async () => {
    const run = await post(rejecting, `${BASE}/edit`, { guidance_scale: 3, negative_prompt: 'fog' }, 'wait=120');
    expect(run.body.status_code, JSON.stringify(run.body)).toBe('succeeded');
    expect(run.body.model_id).toBe(`${BASE}/edit`);
    expect((await row(run.body.id)).region).toBe('a');
    // The api checks guidance against the facts the base worker reported: out of its range is a 422 at submit.
    const tooHigh = await post(rejecting, `${BASE}/edit`, { guidance_scale: 40 });
    expect(tooHigh.status).toBe(422);
    expect(tooHigh.body.errors.map((e: any) => e.field)).toEqual(['input.guidance_scale']);
  });

  it('refuses a run for a model nobody serves with 429 under backpressure "reject", storing nothing', async () => {
    const before = (await db.query('SELECT COUNT(*)::int AS n FROM runs')).rows[0].n;
    const refused = await post(rejecting, `${DISTILLED}/edit`, {});
    expect(refused.status).toBe(429);
    expect(refused.body.code).toBe('RATE_LIMITED');
    expect(refused.body.message).toContain(`no live worker serves ${DISTILLED}`);
    expect(refused.headers.get('retry-after')).toBeTruthy();
    expect((await db.query('SELECT COUNT(*)::int AS n FROM runs')).rows[0].n).toBe(before);
  });

  it('parks it under backpressure "queue" (the base worker never takes it) until a 4B worker joins and runs it', async () => {
    const parked = await post(queueing, `${DISTILLED}/edit`, {});
    expect(parked.status, JSON.stringify(parked.body)).toBe(200);
    // Several sweeps pass with an idle base worker in the region: the run stays unplaced and unclaimed.
    await sleep(4000);
    expect(await row(parked.body.id)).toMatchObject({ status: 'queued', region: null, attempts: 0, worker: null });
    workers.push(await startWorker({ db, region: 'a', redis, storage: `file:${storageDir}`, concurrency: 2 }));
    const run = await new Api(queueing.url, API_KEY).waitTerminal(parked.body.id, 280_000);
    expect(run.status_code, JSON.stringify(run)).toBe('succeeded');
    expect(run.model_id).toBe(`${DISTILLED}/edit`);
    const executions = (await db.query('SELECT worker FROM run_executions WHERE run_id = $1', [parked.body.id])).rows;
    expect(executions.length).toBe(1);
    expect(executions[0].worker).toBe(workers[1].id);
  }, 300_000);
});
