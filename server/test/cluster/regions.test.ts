// Cluster scenario (c): two regions, each with its own Redis and worker. Region a (home) loses its Redis
// mid-load: every run still completes, a's queued runs move to b, new runs avoid a; once a's Redis is back
// (empty, as after a real outage), new runs use a again. Also: per-region metrics and `kleinserve status`.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, tmpDir, waitFor } from '../helpers/server.ts';
import {
  API_KEY,
  assertImage,
  RedisServer,
  startApi,
  startWorker,
  TestDatabase,
  waitWorkers,
  type ApiProc,
  type Proc,
} from './harness.ts';

const BIN = path.resolve(import.meta.dirname, '../../bin/kleinserve.mjs');

let db: TestDatabase;
let redisA: RedisServer;
let redisB: RedisServer;
let api: ApiProc;
let workers: Proc[] = [];
let client: Api;
let image: string;

const create = async (i: number, prefer?: string) => {
  const res = await client.create(
    { input: { prompt: `region run ${i}`, image_urls: [image], steps: 1, seed: i } },
    prefer ? { prefer } : {},
  );
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body;
};
const regionOf = async (ids: string[]) =>
  new Map((await db.query('SELECT id, region, moves FROM runs WHERE id = ANY($1)', [ids])).rows.map((r: any) => [r.id, r]));

beforeAll(async () => {
  image = dataUri(await testImage(64, 64, 'png'), 'image/png');
  const storage = `file:${tmpDir('ks-regions-objects-')}`;
  [db, redisA, redisB] = await Promise.all([TestDatabase.create('ks_regions'), RedisServer.start(), RedisServer.start()]);
  const env = { KLEINSERVE_MAX_CONCURRENT_RUNS: '0', KLEINSERVE_RUNS_PER_MINUTE: '0', KLEINSERVE_WAIT_DEADLINE_MS: '120000' };
  api = await startApi({ db, regions: [['a', redisA], ['b', redisB]], storage, env });
  workers = await Promise.all([
    startWorker({ db, region: 'a', redis: redisA, storage, concurrency: 2 }),
    startWorker({ db, region: 'b', redis: redisB, storage, concurrency: 2 }),
  ]);
  client = new Api(api.url, API_KEY);
  await Promise.all([waitWorkers(api, 'a', 1), waitWorkers(api, 'b', 1)]);
}, 180_000);

afterAll(async () => {
  await Promise.all([api, ...workers].map((p) => p?.stop().catch(() => {})));
  await Promise.all([redisA?.down(), redisB?.down()]);
  await db?.drop();
});

describe('regions: failover and recovery', () => {
  it('(c) region a loses its Redis mid-load: every run completes, a\'s queue moves to b, a is used again once back', async () => {
    const before = await Promise.all(Array.from({ length: 14 }, (_, i) => create(i)));
    const placed = await regionOf(before.map((r) => r.id));
    expect([...placed.values()].filter((r) => r.region === 'a').length).toBeGreaterThan(2); // home preferred

    await redisA.down();
    await waitFor(async () => {
      const h = (await (await fetch(`${api.url}/v1/health`)).json()) as any;
      return h.engine.regions.find((r: any) => r.name === 'a').healthy === false;
    }, 10_000, 'region a unhealthy');

    const { stdout } = await promisify(execFile)(process.execPath, [
      BIN, 'status', '--database-url', db.url, '--region', `a=${redisA.url}`, '--region', `b=${redisB.url}`,
    ]);
    expect(stdout).toMatch(/^a\*\s+UNHEALTHY .*redis unreachable/m);
    expect(stdout).toMatch(/^b\s+healthy\s+1\s+2/m);

    const during = await Promise.all(Array.from({ length: 6 }, (_, i) => create(100 + i)));
    const all = [...before, ...during];
    const done = await Promise.all(all.map((r) => client.waitTerminal(r.id, 240_000)));
    expect(done.map((r) => r.status_code)).toEqual(all.map(() => 'succeeded'));
    for (const r of done) await assertImage(r.output.outputs[0].url, 64, 64);

    const final = await regionOf(all.map((r) => r.id));
    // Runs created during the outage never went to a; runs waiting in a's queue were moved to b.
    expect(during.every((r) => final.get(r.id).region === 'b')).toBe(true);
    const moved = [...final.values()].filter((r) => r.moves > 0);
    expect(moved.length).toBeGreaterThan(0);
    expect(moved.every((r) => r.region === 'b')).toBe(true);

    const metrics = await (await fetch(`${api.url}/metrics`)).text();
    expect(metrics).toMatch(/kleinserve_region_failovers_total\{region="a"\} [1-9]/);
    expect(metrics).toMatch(new RegExp(`kleinserve_region_runs_moved_total\\{from="a",to="b"\\} ${moved.length}`));
    expect(metrics).toMatch(/kleinserve_region_live_workers\{region="b"\} 1/);

    // a comes back (empty, as after a real outage): its worker reconnects and heartbeats, new runs use a again.
    await redisA.up();
    await waitWorkers(api, 'a', 1, 60_000);
    const after = [await create(200, 'wait=120'), await create(201, 'wait=120')];
    expect(after.map((r) => r.status_code)).toEqual(['succeeded', 'succeeded']);
    const back = await regionOf(after.map((r) => r.id));
    expect(after.map((r) => back.get(r.id).region)).toEqual(['a', 'a']);
  }, 420_000);

  it('relays engine step progress from the worker to SSE on the api', async () => {
    const res = await client.create({ input: { prompt: 'progress', image_urls: [image], steps: 2, seed: 7 } });
    const sse = await fetch(`${api.url}/v1/runs/${res.body.id}/events`, { headers: { authorization: `Bearer ${API_KEY}`, accept: 'text/event-stream' } });
    expect(sse.status).toBe(200);
    let text = '';
    const decoder = new TextDecoder();
    for await (const chunk of sse.body as unknown as AsyncIterable<Uint8Array>) {
      text += decoder.decode(chunk, { stream: true });
      if (text.includes('event: run')) break;
    }
    const steps = [...text.matchAll(/event: progress\ndata: (.*)\n/g)].map((m) => JSON.parse(m[1]));
    expect(steps.map((p) => [p.step, p.steps])).toContainEqual([2, 2]);
    expect(steps.every((p) => p.run_id === res.body.id)).toBe(true);
  }, 120_000);
});
