// Cluster scenarios (a), (b), (d) on one real cluster: Postgres, one region Redis, two `kleinserve api`
// replicas, three `kleinserve worker`s each driving its own Python engine on the tiny model.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Api, tmpDir, waitFor } from '../helpers/server.ts';
import { dataUri, testImage } from '../helpers/images.ts';
import {
  API_KEY,
  assertImage,
  outputFilesByRun,
  RedisServer,
  sleep,
  startApi,
  startWorker,
  TestDatabase,
  waitAllTerminal,
  waitWorkers,
  type ApiProc,
  type Proc,
} from './harness.ts';

const API_ENV = { KLEINSERVE_MAX_CONCURRENT_RUNS: '0', KLEINSERVE_RUNS_PER_MINUTE: '0' };

let db: TestDatabase;
let redis: RedisServer;
let storageDir: string;
let storage: string;
let apis: ApiProc[] = [];
let workers: (Proc & { id: string })[] = [];
let image: string;

const body = (i: number, extra: Record<string, unknown> = {}) => ({
  input: { prompt: `cluster run ${i}`, image_urls: [image], steps: 1, seed: i },
  ...extra,
});

beforeAll(async () => {
  image = dataUri(await testImage(64, 64, 'png'), 'image/png');
  storageDir = tmpDir('ks-cluster-objects-');
  storage = `file:${storageDir}`;
  [db, redis] = await Promise.all([TestDatabase.create('ks_cluster'), RedisServer.start()]);
  // The first api runs the migrations; the second then finds the schema in place.
  apis.push(await startApi({ db, regions: [['main', redis]], storage, env: API_ENV }));
  apis.push(await startApi({ db, regions: [['main', redis]], storage, env: API_ENV }));
  // A long heartbeat TTL keeps the region healthy while (d) freezes the workers with SIGSTOP.
  const env = { KLEINSERVE_HEARTBEAT_TTL_MS: '20000' };
  workers = await Promise.all([0, 1, 2].map(() => startWorker({ db, region: 'main', redis, storage, concurrency: 2, env })));
  // Each replica places runs from its own cached view of the region: both must have seen the workers.
  await Promise.all(apis.map((a) => waitWorkers(a, 'main', 3)));
}, 180_000);

afterAll(async () => {
  await Promise.all([...apis, ...workers].map((p) => p.stop().catch(() => {})));
  await redis?.down();
  await db?.drop();
});

async function wonExecutions(ids: string[]): Promise<Map<string, number>> {
  const { rows } = await db.query(
    'SELECT run_id, COUNT(*) FILTER (WHERE won)::int AS won FROM run_executions WHERE run_id = ANY($1) GROUP BY run_id',
    [ids],
  );
  return new Map(rows.map((r: any) => [r.run_id, r.won]));
}

describe('cluster: api replicas + BullMQ workers + Postgres', () => {
  it('(a) 100 runs spread over two api replicas and three workers all succeed with valid images', async () => {
    const clients = apis.map((a) => new Api(a.url, API_KEY));
    const created = await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const res = await clients[i % 2].create(body(i));
        expect(res.status, JSON.stringify(res.body)).toBe(200);
        return res.body.id as string;
      }),
    );
    await waitAllTerminal(db, created, 420_000);
    const done = await Promise.all(created.map((id, i) => clients[(i + 1) % 2].get(id)));
    expect(done.map((r) => r.status_code)).toEqual(created.map(() => 'succeeded'));
    for (const run of done.slice(0, 100)) await assertImage(run.output.outputs[0].url, 64, 64);

    // Spread: every worker ran some of them, and no run was published twice.
    const { rows } = await db.query('SELECT worker, COUNT(*)::int AS n FROM runs WHERE id = ANY($1) GROUP BY worker', [created]);
    expect(rows.length).toBe(3);
    const won = await wonExecutions(created);
    expect([...won.values()].every((n) => n === 1)).toBe(true);
    expect(won.size).toBe(100);
  }, 480_000);

  it('an Idempotency-Key is one key space across replicas: same body, the first run; another body, 409; client_ref never deduplicates', async () => {
    const [a, b] = apis.map((x) => new Api(x.url, API_KEY));
    const first = await a.create(body(900), { 'idempotency-key': 'cluster-key-1' });
    expect(first.status).toBe(200);
    const again = await b.create(body(900), { 'idempotency-key': 'cluster-key-1' });
    expect(again.body.id).toBe(first.body.id);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    const changed = await b.create(body(901), { 'idempotency-key': 'cluster-key-1' });
    expect(changed.status).toBe(409);
    expect(changed.body).toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', errors: [{ field: 'header.idempotency-key' }] });
    const tagged = await Promise.all([a, b].map((c) => c.create(body(902, { client_ref: 'cluster-tag' }))));
    expect(tagged[0].body.id).not.toBe(tagged[1].body.id);
    await waitAllTerminal(db, [first.body.id, ...tagged.map((t) => t.body.id)], 120_000);
  }, 180_000);

  it('(b) kill -9 of a worker holding runs: every run still succeeds, exactly once', async () => {
    const client = new Api(apis[0].url, API_KEY);
    const ids = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => (await client.create(body(1000 + i, { input: { ...body(0).input, steps: 2, seed: 1000 + i } }))).body.id as string),
    );
    // Kill the first worker seen holding a run of this batch.
    let victim: (Proc & { id: string }) | undefined;
    await waitFor(async () => {
      const { rows } = await db.query(`SELECT worker FROM runs WHERE id = ANY($1) AND status IN ('dispatching','running') AND worker IS NOT NULL`, [ids]);
      victim = workers.find((w) => rows.some((r: any) => r.worker === w.id));
      return !!victim;
    }, 90_000, 'a worker holding a run');
    const { rows: held } = await db.query(`SELECT id FROM runs WHERE worker = $1 AND status IN ('dispatching','running')`, [victim!.id]);
    const killedAt = Date.now();
    await victim!.kill9();
    workers = workers.filter((w) => w !== victim);

    await waitAllTerminal(db, ids, 150_000);
    const done = await Promise.all(ids.map((id) => client.get(id)));
    expect(done.map((r) => r.status_code)).toEqual(ids.map(() => 'succeeded'));
    const recoveredIn = Date.now() - killedAt;
    expect(recoveredIn).toBeLessThan(60_000);

    const { rows } = await db.query('SELECT id, attempts, worker FROM runs WHERE id = ANY($1)', [held.map((r: any) => r.id)]);
    // The runs the dead worker held were taken over by a live one (counted as an attempt).
    for (const r of rows) {
      expect(r.worker).not.toBe(victim!.id);
      expect(r.attempts).toBeGreaterThanOrEqual(1);
    }
    const won = await wonExecutions(ids);
    expect(ids.every((id) => won.get(id) === 1)).toBe(true);
    const files = outputFilesByRun(storageDir);
    expect(ids.every((id) => files.get(id)?.length === 1)).toBe(true);
    for (const run of done) await assertImage(run.output.outputs[0].url, 64, 64);
  }, 180_000);

  it('a worker restarts its crashed engine and the runs it held still succeed', async () => {
    const client = new Api(apis[1].url, API_KEY);
    const w = workers[0];
    const enginePid = () => Number(fs.readFileSync(path.join(w.dataDir, 'engine.pid'), 'utf8'));
    const before = enginePid();
    const ids = await Promise.all(Array.from({ length: 8 }, async (_, i) => (await client.create(body(3000 + i))).body.id as string));
    await waitFor(async () => {
      const { rowCount } = await db.query(`SELECT 1 FROM runs WHERE worker = $1 AND status = 'running'`, [w.id]);
      return (rowCount ?? 0) > 0;
    }, 60_000, 'the worker running a run');
    process.kill(before, 'SIGKILL');
    await waitAllTerminal(db, ids, 120_000);
    const done = await Promise.all(ids.map((id) => client.get(id)));
    expect(done.map((r) => r.status_code)).toEqual(ids.map(() => 'succeeded'));
    await waitFor(() => enginePid() !== before, 30_000, 'a new engine');
    expect(w.proc.exitCode).toBeNull();
  }, 180_000);

  it('a run whose workers keep dying ends as failed with WORKER_LOST once its attempts are spent', async () => {
    for (const w of workers) w.proc.kill('SIGSTOP');
    let id: string;
    try {
      id = (await new Api(apis[1].url, API_KEY).create(body(4000))).body.id;
      // As if three workers had died holding it: the next claim is over the bound (KLEINSERVE_MAX_ATTEMPTS=3).
      await db.query('UPDATE runs SET attempts = 3 WHERE id = $1', [id]);
    } finally {
      for (const w of workers) w.proc.kill('SIGCONT');
    }
    await waitAllTerminal(db, [id], 60_000);
    const run = await new Api(apis[1].url, API_KEY).get(id);
    expect(run.status_code).toBe('failed');
    expect(run.error?.code ?? run.failure_code ?? JSON.stringify(run)).toMatch(/WORKER_LOST/);
  }, 120_000);

  it('backpressure: a full cluster answers 429 RATE_LIMITED with Retry-After, or parks runs within the global bound', async () => {
    const reject = await startApi({ db, regions: [['main', redis]], storage, env: { ...API_ENV, KLEINSERVE_RETRY_AFTER_S: '3' }, args: ['--queue-limit', '1'] });
    const queue = await startApi({
      db, regions: [['main', redis]], storage, env: { ...API_ENV, KLEINSERVE_GLOBAL_QUEUE_LIMIT: '12' }, args: ['--queue-limit', '1', '--backpressure', 'queue'],
    });
    // Exactly the live workers: a heartbeat of the worker killed in (b) must have expired (20 s TTL here).
    const live = async (a: ApiProc) => ((await (await fetch(`${a.url}/v1/health`)).json()) as any).engine.regions[0].workers === workers.length;
    await waitFor(async () => (await live(reject)) && (await live(queue)), 60_000, 'only live workers counted');
    for (const w of workers) w.proc.kill('SIGSTOP'); // nothing drains: every queue only grows
    const accepted: string[] = [];
    let refused: any;
    try {
      const rc = new Api(reject.url, API_KEY);
      for (let i = 0; i < 30 && !refused; i++) {
        const res = await rc.create(body(5000 + i));
        if (res.status === 200) accepted.push(res.body.id);
        else refused = res;
      }
      expect(refused?.status).toBe(429);
      expect(refused.body.code).toBe('RATE_LIMITED');
      expect(refused.headers.get('retry-after')).toBe('3');
      // Slots of the live workers plus the queue limit, give or take the runs placed between two refreshes.
      expect(accepted.length).toBeGreaterThan(0);
      expect(accepted.length).toBeLessThanOrEqual(2 * workers.length + 2);

      // "queue" mode takes runs anyway, unplaced, while the cluster holds fewer unfinished runs than the global
      // bound (12 here), then refuses too. (One sweep later, so this replica's count includes the runs above.)
      await sleep(1200);
      const qc = new Api(queue.url, API_KEY);
      const parked: string[] = [];
      let queueRefused: any;
      for (let i = 0; i < 30 && !queueRefused; i++) {
        const res = await qc.create(body(5100 + i));
        if (res.status !== 200) {
          queueRefused = res;
          break;
        }
        accepted.push(res.body.id);
        if ((await db.query('SELECT region FROM runs WHERE id = $1', [res.body.id])).rows[0].region === null) parked.push(res.body.id);
      }
      expect(parked.length).toBeGreaterThan(0);
      expect(queueRefused?.status).toBe(429);
      expect(queueRefused.body.code).toBe('RATE_LIMITED');
      const { rows: open } = await db.query(`SELECT COUNT(*)::int AS n FROM runs WHERE status IN ('queued','dispatching','running')`);
      expect(open[0].n).toBeLessThanOrEqual(12);
    } finally {
      for (const w of workers) w.proc.kill('SIGCONT');
    }
    await waitAllTerminal(db, accepted, 120_000);
    const { rows } = await db.query(`SELECT status, region FROM runs WHERE id = ANY($1)`, [accepted]);
    expect(rows.every((r: any) => r.status === 'succeeded' && r.region === 'main')).toBe(true);
    await Promise.all([reject.stop(), queue.stop()]);
  }, 180_000);

  it('(d) an api replica killed under held Prefer: wait requests: clients retry on the other and get their runs', async () => {
    // Hold the runs: freeze the workers so the requests are still waiting when the replica dies.
    for (const w of workers) w.proc.kill('SIGSTOP');
    const victim = apis[0];
    const survivor = apis[1];
    const refs = Array.from({ length: 6 }, (_, i) => `held-${Date.now()}-${i}`);
    const post = (url: string, ref: string, i: number) =>
      fetch(`${url}/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs`, {
        method: 'POST',
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json', prefer: 'wait=60', 'idempotency-key': ref },
        body: JSON.stringify(body(2000 + i, { client_ref: ref })),
      });
    const clients = refs.map(async (ref, i) => {
      try {
        const res = await post(victim.url, ref, i);
        return { first: 'answered', run: await res.json() };
      } catch {
        // The replica died mid-request: retry the same create (same key) against the other replica.
        const res = await post(survivor.url, ref, i);
        return { first: 'dropped', run: (await res.json()) as any };
      }
    });
    try {
      await waitFor(async () => (await db.query('SELECT 1 FROM runs WHERE client_ref = ANY($1)', [refs])).rowCount === refs.length, 30_000, 'runs created');
      await sleep(300);
      await victim.kill9();
      apis = apis.filter((a) => a !== victim);
    } finally {
      for (const w of workers) w.proc.kill('SIGCONT');
    }
    const results = await Promise.all(clients);
    expect(results.map((r) => r.first)).toEqual(refs.map(() => 'dropped'));
    expect(results.map((r) => r.run.status_code)).toEqual(refs.map(() => 'succeeded'));
    // One run per client: the retry found the run the dead replica had created instead of making a second.
    const { rows } = await db.query('SELECT client_ref, COUNT(*)::int AS n FROM runs WHERE client_ref = ANY($1) GROUP BY client_ref', [refs]);
    expect(rows.map((r: any) => r.n)).toEqual(refs.map(() => 1));
    for (const r of results) await assertImage(r.run.output.outputs[0].url, 64, 64);
  }, 120_000);

  it('a worker stopped with SIGTERM finishes or hands back what it holds; every run succeeds without using an attempt', async () => {
    const client = new Api(apis[apis.length - 1].url, API_KEY);
    const ids = await Promise.all(Array.from({ length: 12 }, async (_, i) => (await client.create(body(6000 + i))).body.id as string));
    const w = workers[0];
    await waitFor(async () => {
      const { rowCount } = await db.query(`SELECT 1 FROM runs WHERE worker = $1 AND status IN ('dispatching','running') AND id = ANY($2)`, [w.id, ids]);
      return (rowCount ?? 0) > 0;
    }, 60_000, 'the worker holding a run');
    await w.stop();
    expect(w.proc.exitCode).toBe(0);
    workers = workers.filter((x) => x !== w);
    await waitAllTerminal(db, ids, 120_000);
    const { rows } = await db.query('SELECT status, attempts FROM runs WHERE id = ANY($1)', [ids]);
    expect(rows.every((r: any) => r.status === 'succeeded' && r.attempts === 0)).toBe(true);
    expect([...(await wonExecutions(ids)).values()].every((n) => n === 1)).toBe(true);
  }, 180_000);
});
