// A run for a model no worker serves waits for one, but not forever. Two api replicas under backpressure "queue"
// with KLEINSERVE_UNSERVED_WAIT_MS=3000 and no worker at all: a parked run, and one placed in region a (as if its
// worker had left since), stay queued at first, then fail MODEL_UNAVAILABLE naming the model once the model has had
// no live worker for 3 s and the run has waited as long; each ends once (one callback) although both replicas sweep.
// A run submitted after that still gets its own full wait.
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { callbackReceiver } from '../helpers/receivers.ts';
import { Api, tmpDir, waitFor } from '../helpers/server.ts';
import { API_KEY, RedisServer, startApi, TestDatabase, type ApiProc } from './harness.ts';

const MODEL = 'black-forest-labs/flux-2-klein-9b';
const WAIT_MS = 3000;

let db: TestDatabase;
let redis: RedisServer;
let storageDir: string;
let apis: ApiProc[] = [];
let hooks: Awaited<ReturnType<typeof callbackReceiver>>;
let image: string;

const submit = async (hook: string) => {
  const res = await fetch(`${apis[0].url}/v1/models/${MODEL}/edit/runs`, {
    method: 'POST',
    headers: new Api(apis[0].url, API_KEY).headers(),
    body: JSON.stringify({ input: { prompt: 'a harbour', image_urls: [image], steps: 1 }, callback_url: hooks.url(hook) }),
  });
  const body = (await res.json()) as any;
  expect(res.status, JSON.stringify(body)).toBe(200);
  return body.id as string;
};
const row = async (id: string) => (await db.query('SELECT status, region, failure_code, failure_message, completed_at FROM runs WHERE id = $1', [id])).rows[0];

beforeAll(async () => {
  image = dataUri(await testImage(64, 64, 'png'), 'image/png');
  storageDir = tmpDir('ks-unserved-objects-');
  hooks = await callbackReceiver();
  [db, redis] = await Promise.all([TestDatabase.create('ks_unserved'), RedisServer.start()]);
  const env = { KLEINSERVE_UNSERVED_WAIT_MS: String(WAIT_MS), KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1', KLEINSERVE_CALLBACK_BASE_DELAY_MS: '50' };
  const opts = { db, regions: [['a', redis]] as [string, RedisServer][], storage: `file:${storageDir}`, env, args: ['--backpressure', 'queue'] };
  apis = await Promise.all([startApi(opts), startApi(opts)]);
}, 120_000);

afterAll(async () => {
  await Promise.all(apis.map((a) => a.stop().catch(() => {})));
  await hooks?.close();
  await redis?.down();
  await db?.drop();
  if (storageDir) fs.rmSync(storageDir, { recursive: true, force: true });
});

describe('a model no worker serves', () => {
  it('keeps its runs queued for the wait, then fails them MODEL_UNAVAILABLE once each, naming the model', async () => {
    const parked = await submit('/parked');
    const placed = await submit('/placed');
    await db.query(`UPDATE runs SET region = 'a' WHERE id = $1`, [placed]);
    const started = Date.now();
    expect(await row(parked)).toMatchObject({ status: 'queued', region: null });
    expect(await row(placed)).toMatchObject({ status: 'queued', region: 'a' });

    const api = new Api(apis[1].url, API_KEY);
    for (const id of [parked, placed]) {
      const run = await api.waitTerminal(id, 30_000);
      expect(run.status_code, JSON.stringify(run)).toBe('failed');
      expect(run.failure_code).toBe('MODEL_UNAVAILABLE');
      expect(run.failure_message).toContain(`no live worker has served ${MODEL} in any region for 3 s`);
      expect(run.error).toMatchObject({ code: 'MODEL_UNAVAILABLE' });
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(WAIT_MS - 1000);

    await waitFor(() => hooks.received.filter((r) => [parked, placed].includes(r.body.run_id)).length >= 2, 20_000, 'both failure callbacks');
    await new Promise((r) => setTimeout(r, 1500)); // several more sweeps by both replicas
    for (const id of [parked, placed]) {
      const got = hooks.received.filter((r) => r.body.run_id === id);
      expect(got).toHaveLength(1);
      expect(got[0].body).toMatchObject({ event: 'run.failed', status: 'failed' });
      expect((await db.query('SELECT COUNT(*)::int AS n FROM deliveries WHERE run_id = $1', [id])).rows[0].n).toBe(1);
    }
  });

  it('gives a run submitted later its own full wait', async () => {
    const late = await submit('/late');
    const created = Date.now();
    await new Promise((r) => setTimeout(r, 1500));
    expect((await row(late)).status).toBe('queued');
    const run = await new Api(apis[0].url, API_KEY).waitTerminal(late, 30_000);
    expect(run.failure_code).toBe('MODEL_UNAVAILABLE');
    expect(Date.now() - created).toBeGreaterThanOrEqual(WAIT_MS - 500);
  });
});
