// The cluster stores refusing writes, for real: a Postgres database switched to read-only (as a replica is
// after a failover) and an S3 endpoint that cannot be reached. Both fail into a StorageWriteError naming
// what could not be written, reported to health, and Postgres works again once writable.
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/runs/postgres-store.ts';
import type { RunRecord } from '../../src/runs/types.ts';
import { StorageHealth } from '../../src/storage/health.ts';
import { objectStoreProbe, postgresProbe } from '../../src/storage/probes.ts';
import { S3Store } from '../../src/storage/s3-store.ts';
import { StorageWriteError } from '../../src/storage/write-failure.ts';
import { PG_ADMIN, TestDatabase } from '../cluster/harness.ts';

const silent = pino({ level: 'silent' });
let n = 0;
function run(): RunRecord {
  n++;
  return {
    id: `0190d1c5-0000-7000-8000-${String(n).padStart(12, '0')}`,
    status: 'queued', model_id: 'm',
    input: { prompt: 'p', images: [], seed: 1, steps: 1, output_format: 'jpeg', output_quality: 90, width: null, height: null, num_images: 1 },
    output: null, metadata: null, client_ref: null, callback_url: null, created_at: Date.now(), started_at: null, completed_at: null,
    failure_code: null, failure_message: null, failure_stage_code: null, attempts: 0, output_token: 'f'.repeat(32),
  } as RunRecord;
}

async function admin(sql: string) {
  const c = new pg.Client({ connectionString: PG_ADMIN });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

describe('remote stores refusing writes', () => {
  let db: TestDatabase | undefined;
  afterAll(async () => {
    if (db) await admin(`ALTER DATABASE ${db.name} RESET default_transaction_read_only`).catch(() => {});
    await db?.drop();
  });

  it('Postgres gone read-only: StorageWriteError naming the write, health down, then writable again', async () => {
    db = await TestDatabase.create('ks_faults');
    const health = new StorageHealth(silent, 0);
    const store = await PostgresStore.open(db.url, { onWriteFailure: health.report, max: 2 });
    health.start([postgresProbe(store.pool)]);
    const kept = run();
    await store.insert(kept);
    await health.probe();
    expect(health.snapshot().runs.writable).toBe(true);

    // New sessions start read-only; end the current ones so the pool reconnects into that.
    await admin(`ALTER DATABASE ${db.name} SET default_transaction_read_only = on`);
    await admin(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${db.name}' AND pid <> pg_backend_pid()`);
    // The first query may meet the terminated session (also a refused write); then read-only itself.
    let insert: unknown;
    for (let i = 0; i < 5 && !/read-only/.test(String((insert as Error)?.message)); i++) insert = await store.insert(run()).catch((e) => e);
    expect(insert).toBeInstanceOf(StorageWriteError);
    expect(insert).toMatchObject({ store: 'runs', what: 'run record', kind: 'failed' });
    expect((insert as Error).message).toMatch(/could not store run record: storage failed \(25006: cannot execute INSERT in a read-only transaction/);
    const transition = await store.transition(kept.id, ['queued'], { status: 'failed', completed_at: Date.now() }).catch((e) => e);
    expect(transition).toMatchObject({ what: 'run status (failed)' });
    expect((await store.get(kept.id))!.status).toBe('queued'); // reads still work
    expect(health.snapshot().runs.writable).toBe(false);

    await admin(`ALTER DATABASE ${db.name} RESET default_transaction_read_only`);
    await admin(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${db.name}' AND pid <> pg_backend_pid()`);
    let done = null;
    for (let i = 0; i < 5 && !done; i++) done = await store.transition(kept.id, ['queued'], { status: 'failed', completed_at: Date.now() }).catch(() => null);
    expect(done!.status).toBe('failed');
    await health.probe();
    expect(health.snapshot().runs.writable).toBe(true);
    await store.close();
  });

  it('S3 endpoint unreachable: a put is a StorageWriteError naming the key, reported to health', async () => {
    const health = new StorageHealth(silent, 0);
    const s3 = new S3Store({
      bucket: 'kleinserve-faults',
      onWriteFailure: health.report,
      client: { endpoint: 'http://127.0.0.1:9', forcePathStyle: true, region: 'us-east-1', maxAttempts: 1, credentials: { accessKeyId: 'x', secretAccessKey: 'y' } },
    });
    const err = await s3.put('outputs/r/tok.jpg', Buffer.from('x')).catch((e) => e);
    expect(err).toBeInstanceOf(StorageWriteError);
    expect(err).toMatchObject({ store: 'objects', what: 'outputs/r/tok.jpg', kind: 'failed' });
    expect(health.snapshot().objects.writable).toBe(false);
    health.start([objectStoreProbe(s3)]);
    await health.probe();
    expect(health.snapshot().objects).toMatchObject({ writable: false });
    expect((await health.failures.get()).values.reduce((a, v) => a + v.value, 0)).toBeGreaterThanOrEqual(2);
  });
});
