// A worker starts its engine with the same operator settings as `serve`: a real worker on the tiny model with
// --lora-max-rank 4 heartbeats its engine's limits, and the api (which checks LoRAs against them at submit time)
// sees the engine's rank limit of 4 for that model.
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tmpDir, waitFor } from '../helpers/server.ts';
import { RedisServer, startApi, startWorker, TestDatabase, type ApiProc, type Proc } from './harness.ts';

const MODEL = 'black-forest-labs/flux-2-klein-4b';

let db: TestDatabase;
let redis: RedisServer;
let storageDir: string;
let api: ApiProc;
let worker: Proc;

beforeAll(async () => {
  storageDir = tmpDir('ks-worker-options-');
  [db, redis] = await Promise.all([TestDatabase.create('ks_worker_options'), RedisServer.start()]);
  const storage = `file:${storageDir}`;
  api = await startApi({ db, regions: [['a', redis]], storage });
  worker = await startWorker({ db, region: 'a', redis, storage, env: { KLEINSERVE_LORA_MAX_RANK: '4' } });
}, 180_000);

afterAll(async () => {
  await Promise.all([api, worker].map((p) => p?.stop().catch(() => {})));
  await redis?.down();
  await db?.drop();
  if (storageDir) fs.rmSync(storageDir, { recursive: true, force: true });
});

describe('worker engine options', () => {
  it("reports the engine's rank limit from KLEINSERVE_LORA_MAX_RANK through its heartbeat", async () => {
    let limits: any;
    await waitFor(async () => {
      const health = (await (await fetch(`${api.url}/v1/health`)).json()) as any;
      // Until its engine has loaded, a worker's beat carries the default limits (no rank limit yet).
      limits = health.engine.models?.[MODEL]?.model_info ? health.engine.models[MODEL].limits : undefined;
      return limits !== undefined;
    }, 170_000, 'the worker’s engine loaded');
    expect(limits.max_lora_rank).toBe(4);
  }, 180_000);
});
