// Every store on a real, tiny tmpfs that is filled to the last byte: writes fail into a StorageWriteError
// naming what could not be written (never a crash, never a temp file left), health sees it, and all of it
// works again once space is freed. The sweeper removes temp files and files no run owns.
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteIdempotencyStore } from '../../src/idempotency/sqlite.ts';
import { SqliteRetentionStore } from '../../src/retention/sqlite.ts';
import { RetentionSweeper } from '../../src/retention/sweeper.ts';
import { RunEventBus } from '../../src/runs/events.ts';
import { RunLifecycle } from '../../src/runs/lifecycle.ts';
import { SqliteStore } from '../../src/runs/sqlite-store.ts';
import type { RunRecord } from '../../src/runs/types.ts';
import { DiskStore } from '../../src/storage/disk-store.ts';
import { StorageHealth } from '../../src/storage/health.ts';
import { objectStoreProbe, sqliteProbe } from '../../src/storage/probes.ts';
import { StorageWriteError } from '../../src/storage/write-failure.ts';
import { tmpDir } from '../helpers/server.ts';
import { mountTinyVolume, type TinyVolume } from './tmpfs.ts';

const mounted = mountTinyVolume(4 * 1024 * 1024);
const vol = typeof mounted === 'string' ? null : mounted;
if (!vol) console.warn(`skipping full-disk store tests: ${mounted}`);
afterAll(() => vol?.unmount());

const silent = pino({ level: 'silent' });
let n = 0;
function run(): RunRecord {
  n++;
  return {
    id: `0190d1c5-0000-7000-8000-${String(n).padStart(12, '0')}`,
    status: 'queued', model_id: 'm',
    input: { prompt: 'p'.repeat(2000), images: [], seed: 1, steps: 1, output_format: 'jpeg', output_quality: 90, width: null, height: null, num_images: 1 },
    output: null, metadata: null, client_ref: null, callback_url: null, created_at: Date.now(), started_at: null, completed_at: null,
    failure_code: null, failure_message: null, failure_stage_code: null, attempts: 0, output_token: 'f'.repeat(32),
  } as RunRecord;
}

const tempFiles = (dir: string): string[] =>
  (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => f.endsWith('.tmp'));

describe.skipIf(!vol)('stores on a full disk', () => {
  const v = vol as TinyVolume;
  let health: StorageHealth;
  let objects: DiskStore;
  let store: SqliteStore;
  const dbFile = () => path.join(v.dir, 'runs.db');

  beforeAll(() => {
    health = new StorageHealth(silent, 0);
    objects = new DiskStore(path.join(v.dir, 'objects'), false, health.report);
    store = new SqliteStore(dbFile(), health.report);
    health.start([objectStoreProbe(objects), sqliteProbe(dbFile())]);
  });
  afterAll(() => store.close());

  it('refuses writes with a StorageWriteError naming what, leaves no temp file, and recovers', async () => {
    const kept = run();
    await store.insert(kept);
    await objects.put('inputs/a/0', Buffer.alloc(1000, 1));
    await health.probe();
    expect(health.snapshot().writable).toBe(true);

    v.fill();
    const put = await objects.put('inputs/b/0', Buffer.alloc(200_000, 2)).catch((e) => e);
    expect(put).toBeInstanceOf(StorageWriteError);
    expect(put).toMatchObject({ kind: 'full', store: 'objects', what: 'inputs/b/0' });
    expect(put.message).toMatch(/could not store inputs\/b\/0: storage is full \(ENOSPC/);
    expect(tempFiles(objects.root)).toEqual([]);

    const insert = await store.insert(run()).catch((e) => e);
    expect(insert).toBeInstanceOf(StorageWriteError);
    expect(insert).toMatchObject({ kind: 'full', store: 'runs', what: 'run record' });
    const transition = await store.transition(kept.id, ['queued'], { status: 'failed', completed_at: Date.now() }).catch((e) => e);
    expect(transition).toMatchObject({ kind: 'full', what: 'run status (failed)' });
    expect((await store.get(kept.id))!.status).toBe('queued'); // reads still work, nothing half-written

    await health.probe();
    const down = health.snapshot();
    expect(down.writable).toBe(false);
    expect(down.objects.writable).toBe(false);
    expect(down.runs.writable).toBe(false);
    const counted = (await health.failures.get()).values.reduce((a, x) => a + x.value, 0);
    expect(counted).toBeGreaterThanOrEqual(3);

    v.free();
    await objects.put('inputs/b/0', Buffer.alloc(200_000, 2));
    expect((await store.transition(kept.id, ['queued'], { status: 'failed', completed_at: Date.now() }))!.status).toBe('failed');
    await store.insert(run());
    await health.probe();
    expect(health.snapshot().writable).toBe(true);
  });

  it('a run whose final state cannot be written is recorded once writes work again, with its event', async () => {
    const bus = new RunEventBus();
    const life = new RunLifecycle(store, bus, { maxAttempts: 3, logger: silent });
    const events: string[] = [];
    bus.subscribe('*', (ev) => ev.type === 'status' && events.push(ev.run.status));
    const r = run();
    await life.create(r);
    let claimed = (await life.claimNext())!;
    while (claimed.id !== r.id) claimed = (await life.claimNext())!; // older queued runs of the test above
    await life.markRunning(claimed);

    v.fill();
    const output = { images: [{ key: `outputs/${r.id}/x.jpg`, content_type: 'image/jpeg', width: 8, height: 8 }], seed: 1, timing: {} };
    await expect(life.succeed(claimed, output)).rejects.toBeInstanceOf(StorageWriteError);
    // The dispatcher's fallback (fail) is refused too; the first change held is the one kept.
    await expect(life.fail(claimed, 'INTERNAL', 'x', 'dispatch')).rejects.toBeInstanceOf(StorageWriteError);
    expect(life.unrecorded.size).toBe(1);
    await new Promise((res) => setTimeout(res, 1500));
    expect((await store.get(r.id))!.status).toBe('running');

    v.free();
    const t0 = Date.now();
    while ((await store.get(r.id))!.status === 'running' && Date.now() - t0 < 5000) await new Promise((res) => setTimeout(res, 50));
    expect((await store.get(r.id))!.status).toBe('succeeded');
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(events.at(-1)).toBe('succeeded');
    expect(life.unrecorded.size).toBe(0);
  });

  it('recovering runs left in flight does not fail on a full disk; the requeues are recorded later', async () => {
    const life = new RunLifecycle(store, new RunEventBus(), { maxAttempts: 3, logger: silent });
    const r = run();
    await life.create(r);
    let claimed = (await life.claimNext())!;
    while (claimed.id !== r.id) claimed = (await life.claimNext())!;
    v.fill();
    // A restart's recovery, with the disk full: it must not throw (the process would not start).
    const restarted = new RunLifecycle(store, new RunEventBus(), { maxAttempts: 3, logger: silent });
    expect(await restarted.recover()).toBeGreaterThanOrEqual(1);
    expect((await store.get(r.id))!.status).toBe('dispatching');
    v.free();
    await restarted.unrecorded.retry();
    expect((await store.get(r.id))!.status).toBe('queued');
  });

  it('the sweeper removes old temp files and files of runs without a record, and nothing else', async () => {
    const dir = tmpDir('ks-orphans-');
    const disk = new DiskStore(path.join(dir, 'objects'));
    const runs = new SqliteStore(path.join(dir, 'runs.db'));
    const owned = run();
    await runs.insert(owned);
    const db = new Database(path.join(dir, 'runs.db'));
    const sweeper = new RetentionSweeper({
      store: new SqliteRetentionStore(db), objects: disk, idempotency: new SqliteIdempotencyStore(db), bus: new RunEventBus(), logger: silent,
      outputTtlMs: 3600_000, recordTtlMs: 30 * 86400_000, idempotencyWindowMs: 86400_000, intervalMs: 0, orphanGraceMs: 60_000,
    });
    const old = (Date.now() - 120_000) / 1000;
    const write = (key: string, age: number) => {
      const file = path.join(disk.root, key);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, 'x');
      fs.utimesSync(file, age, age);
    };
    write(`inputs/${owned.id}/0`, old); // has a record: kept
    write('inputs/0190d1c5-0000-7000-8000-orphan000001/0', old); // no record, old: removed
    write('outputs/0190d1c5-0000-7000-8000-orphan000001/tok.jpg', old);
    write('inputs/0190d1c5-0000-7000-8000-young0000001/0', Date.now() / 1000); // no record yet, young: kept
    write(`outputs/${owned.id}/tok.jpg.0123456789ab.tmp`, old); // an interrupted write: removed
    write('inputs/0190d1c5-0000-7000-8000-young0000001/1.0123456789ab.tmp', Date.now() / 1000); // in progress: kept

    const result = await sweeper.sweep();
    expect(result.orphans).toBe(3);
    const left = (fs.readdirSync(disk.root, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(disk.root, f)).isFile()).sort();
    expect(left).toEqual([
      `inputs/${owned.id}/0`,
      'inputs/0190d1c5-0000-7000-8000-young0000001/0',
      'inputs/0190d1c5-0000-7000-8000-young0000001/1.0123456789ab.tmp',
    ].sort());
    expect(fs.existsSync(path.join(disk.root, 'inputs/0190d1c5-0000-7000-8000-orphan000001'))).toBe(false);
    db.close();
    await runs.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
