// The store's conditional transitions are what make "completes at most once" true; test them directly.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { RunEventBus } from '../../src/runs/events.ts';
import { RunLifecycle } from '../../src/runs/lifecycle.ts';
import { SqliteStore } from '../../src/runs/sqlite-store.ts';
import type { RunRecord } from '../../src/runs/types.ts';

let n = 0;
function newRun(): RunRecord {
  n++;
  return {
    id: `0190d1c5-0000-7000-8000-${String(n).padStart(12, '0')}`,
    status: 'queued',
    model_id: 'm',
    input: { prompt: 'p', images: [{ kind: 'url', url: 'https://x/y.jpg' }], seed: 1, steps: 4, output_format: 'jpeg', output_quality: 95, width: null, height: null, num_images: 1 },
    output: null,
    metadata: { a: 1 },
    client_ref: null,
    callback_url: 'https://example.com/hook',
    created_at: Date.now(),
    started_at: null,
    completed_at: null,
    failure_code: null,
    failure_message: null,
    failure_stage_code: null,
    attempts: 0,
    output_token: 'f'.repeat(32),
  };
}

function setup(maxAttempts = 3) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ks-store-')), 'runs.db');
  const store = new SqliteStore(file);
  const life = new RunLifecycle(store, new RunEventBus(), {
    maxAttempts,
    logger: pino({ level: 'silent' }),
    callbackBody: (r) => ({ event: `run.${r.status}`, body: JSON.stringify({ id: r.id, status: r.status }) }),
  });
  return { file, store, life };
}

describe('SQLite store + lifecycle', () => {
  it('claims oldest first, each run once', async () => {
    const { store, life } = setup();
    const a = await life.create(newRun());
    const b = await life.create(newRun());
    expect((await life.claimNext())!.id).toBe(a.id);
    expect((await life.claimNext())!.id).toBe(b.id);
    expect(await life.claimNext()).toBeNull();
    expect((await store.countByStatus()).dispatching).toBe(2);
  });

  it('completes a run at most once: a late success loses to a cancel, and writes one callback', async () => {
    const { store, life } = setup();
    const run = await life.create(newRun());
    const claimed = (await life.claimNext())!;
    const running = (await life.markRunning(claimed))!;
    expect(await life.cancel(running)).not.toBeNull();
    expect(await life.succeed(running, { images: [], seed: 1, timing: {} })).toBeNull();
    expect(await life.fail(running, 'X', 'y', 'inference')).toBeNull();
    expect((await store.get(run.id))!.status).toBe('canceled');
    const deliveries = await store.getDeliveries(run.id);
    expect(deliveries).toHaveLength(1);
    expect(JSON.parse(deliveries[0].body)).toEqual({ id: run.id, status: 'canceled' });
  });

  it('requeues in-flight runs after a restart, and fails them after bounded attempts', async () => {
    const { file, life } = setup(2);
    const run = await life.create(newRun());
    await life.markRunning((await life.claimNext())!);
    // A new process opens the same file.
    const store2 = new SqliteStore(file);
    const life2 = new RunLifecycle(store2, new RunEventBus(), { maxAttempts: 2, logger: pino({ level: 'silent' }) });
    expect(await life2.recover()).toBe(1);
    const again = (await store2.get(run.id))!;
    expect([again.status, again.attempts, again.started_at]).toEqual(['queued', 1, null]);
    await life2.markRunning((await life2.claimNext())!);
    await life2.recover();
    const failed = (await store2.get(run.id))!;
    expect([failed.status, failed.failure_code, failed.attempts]).toEqual(['failed', 'ENGINE_CRASHED', 2]);
  });

  it('after a restart without a model, fails its queued and recovered runs once, with one callback each', async () => {
    const { file, life } = setup(3);
    const kept = await life.create({ ...newRun(), model_id: 'kept/edit' });
    const queued = await life.create({ ...newRun(), model_id: 'dropped/edit' });
    const inFlight = await life.create({ ...newRun(), model_id: 'dropped' });
    await life.claimNext(['dropped']);
    const store2 = new SqliteStore(file);
    const life2 = new RunLifecycle(store2, new RunEventBus(), {
      maxAttempts: 3,
      logger: pino({ level: 'silent' }),
      callbackBody: (r) => ({ event: `run.${r.status}`, body: JSON.stringify({ id: r.id, status: r.status }) }),
    });
    expect(await life2.recover()).toBe(1);
    const why = (r: RunRecord) => `${r.model_id} is not served here`;
    expect(await life2.failUnserved(['kept', 'kept/edit'], why)).toBe(2);
    expect(await life2.failUnserved(['kept', 'kept/edit'], why)).toBe(0);
    for (const run of [queued, inFlight]) {
      const failed = (await store2.get(run.id))!;
      expect([failed.status, failed.failure_code, failed.failure_stage_code, failed.failure_message]).toEqual([
        'failed', 'MODEL_UNAVAILABLE', 'dispatch', `${run.model_id} is not served here`,
      ]);
      expect(await store2.getDeliveries(run.id)).toHaveLength(1);
    }
    expect((await store2.get(inFlight.id))!.attempts).toBe(1);
    expect((await store2.get(kept.id))!.status).toBe('queued');
    expect(await store2.getDeliveries(kept.id)).toHaveLength(0);
  });

  it('lists newest first with cursor and status filter', async () => {
    const { store, life } = setup();
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await life.create(newRun())).id);
    await life.cancel((await store.get(ids[1]))!);
    const page = await store.list({ limit: 2 });
    expect(page.map((r) => r.id)).toEqual([ids[4], ids[3]]);
    expect((await store.list({ limit: 10, cursor: ids[3] })).map((r) => r.id)).toEqual([ids[2], ids[1], ids[0]]);
    expect((await store.list({ limit: 10, status: ['canceled'] })).map((r) => r.id)).toEqual([ids[1]]);
  });

  it('keeps delivery state: due, retried, delivered', async () => {
    const { store, life } = setup();
    const run = await life.create(newRun());
    await life.cancel(run);
    const [d] = await store.dueDeliveries(Date.now() + 1, 10);
    await store.recordAttempt(d.id, { delivered: false, next_attempt_at: Date.now() + 60_000, error: 'HTTP 500' });
    expect(await store.dueDeliveries(Date.now(), 10)).toHaveLength(0);
    expect(await store.nextDueAt()).toBeGreaterThan(Date.now());
    await store.recordAttempt(d.id, { delivered: true, next_attempt_at: null, error: null });
    const [after] = await store.getDeliveries(run.id);
    expect([after.state, after.attempts]).toEqual(['delivered', 2]);
  });
});
