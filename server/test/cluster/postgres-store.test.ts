// The Postgres run store's cluster guarantees against a real database: leases fence late finishers, a run
// is completed once, moves and claims cannot both win, migrations are idempotent.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgIdempotencyStore } from '../../src/idempotency/postgres.ts';
import { PostgresStore } from '../../src/runs/postgres-store.ts';
import type { RunRecord } from '../../src/runs/types.ts';
import { TestDatabase } from './harness.ts';

let db: TestDatabase;
let store: PostgresStore;
let region: string | null = 'a';

const newRun = (): RunRecord => ({
  id: randomUUID(), status: 'queued', model_id: 'm', output: null, metadata: { k: 1 }, client_ref: null, callback_url: null,
  input: { prompt: 'p', images: [], seed: 1, steps: 1, output_format: 'png', output_quality: 90, width: 64, height: 64, num_images: 1 },
  created_at: Date.now(), started_at: null, completed_at: null, failure_code: null, failure_message: null,
  failure_stage_code: null, attempts: 0, output_token: 'tok', region,
});
const output = { images: [{ key: 'outputs/x/y.png', content_type: 'image/png', width: 64, height: 64 }], seed: 1, timing: {} };

beforeAll(async () => {
  db = await TestDatabase.create('ks_pgstore');
  store = await PostgresStore.open(db.url);
});
afterAll(async () => {
  await store?.close();
  await db?.drop();
});

describe('PostgresStore', () => {
  it('round-trips a run and re-running migrations is a no-op', async () => {
    const run = newRun();
    await store.insert(run);
    const got = await store.get(run.id);
    expect(got).toMatchObject({ ...run, region: 'a', lease_token: null, moves: 0 });
    expect(typeof got!.queued_at).toBe('number');
    const again = await PostgresStore.open(db.url);
    expect(await again.get(run.id)).toMatchObject({ id: run.id });
    await again.close();
  });

  it('a worker that lost its lease loses the completion: completed once, by the current holder', async () => {
    const run = newRun();
    await store.insert(run);
    const first = await store.claimForWorker(run.id, 'a', 'w1', 't1', 50);
    expect(first).toMatchObject({ status: 'dispatching', worker: 'w1', attempts: 0 });
    // While w1's lease holds, nobody else can claim.
    expect(await store.claimForWorker(run.id, 'a', 'w2', 't2', 5000)).toBeNull();
    await new Promise((r) => setTimeout(r, 80));
    const second = await store.claimForWorker(run.id, 'a', 'w2', 't2', 5000);
    expect(second).toMatchObject({ worker: 'w2', attempts: 1 }); // a takeover counts as an attempt
    expect(await store.renewLease(run.id, 't1', 5000)).toBe(false);
    // w1 finishes late: its fenced write loses; w2's wins; a second completion by anyone loses.
    expect(await store.transitionGuarded(run.id, ['dispatching', 'running'], { status: 'succeeded', output }, undefined, 't1')).toBeNull();
    const won = await store.transitionGuarded(run.id, ['dispatching', 'running'], { status: 'succeeded', output }, undefined, 't2');
    expect(won).toMatchObject({ status: 'succeeded', lease_token: null });
    expect(await store.transitionGuarded(run.id, ['dispatching', 'running'], { status: 'succeeded', output }, undefined, 't2')).toBeNull();
    expect(await store.transition(run.id, ['queued', 'dispatching', 'running'], { status: 'failed' })).toBeNull();
  });

  it('only claims runs of its own region; a moved run cannot be claimed by the old region', async () => {
    const run = newRun();
    await store.insert(run);
    expect(await store.moveRuns('a', 'b', 1000)).toContain(run.id);
    expect(await store.claimForWorker(run.id, 'a', 'w1', 't', 5000)).toBeNull();
    expect(await store.claimForWorker(run.id, 'b', 'w3', 't', 5000)).toMatchObject({ region: 'b', moves: 1 });
    // A held run with a live lease is not moved.
    expect(await store.moveRuns('b', 'a', 1000)).not.toContain(run.id);
  });

  it('claim and move racing on one queued run: exactly one wins', async () => {
    for (let i = 0; i < 20; i++) {
      const run = newRun();
      await store.insert(run);
      const [claimed, moved] = await Promise.all([store.claimForWorker(run.id, 'a', 'w', 't', 5000), store.moveRuns('a', 'b', 1000)]);
      expect(Number(claimed !== null) + Number(moved.includes(run.id))).toBe(1);
    }
  });

  it('parks unplaced runs and places them later', async () => {
    region = null;
    const run = newRun();
    await store.insert(run);
    region = 'a';
    expect((await store.get(run.id))!.region).toBeNull();
    expect(await store.moveRuns(null, 'a', 1000)).toEqual([run.id]);
    expect(await store.get(run.id)).toMatchObject({ region: 'a', moves: 0 });
  });

  it('notifies every status change to listeners', async () => {
    const seen: string[] = [];
    const listener = await PostgresStore.open(db.url);
    await listener.listen((id) => seen.push(id), () => {});
    const run = newRun();
    await store.insert(run);
    await store.transition(run.id, ['queued'], { status: 'canceled' });
    await new Promise((r) => setTimeout(r, 300));
    expect(seen.filter((id) => id === run.id).length).toBe(2);
    await listener.close();
  });

  it('idempotency: two replicas (pools) racing on one key, exactly one reserves it; the other sees the bound run', async () => {
    const other = await PostgresStore.open(db.url);
    const [a, b] = [new PgIdempotencyStore(store.pool), new PgIdempotencyStore(other.pool)];
    for (let i = 0; i < 10; i++) {
      const key = `k-${i}-${randomUUID()}`;
      const now = Date.now();
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, j) => (j % 2 ? a : b).reserve('scope', key, now, 60_000, 5_000)),
      );
      expect(results.filter((r) => r.won).length).toBe(1);
      await a.bind('scope', key, `run-${i}`);
      expect(await b.reserve('scope', key, now + 1, 60_000, 5_000)).toEqual({ won: false, runId: `run-${i}` });
      // Out of its window the key is free again.
      expect((await b.reserve('scope', key, now + 60_001, 60_000, 5_000)).won).toBe(true);
    }
    await other.close();
  });
});
