// Postgres side of idempotency for cluster replicas. The primary key on (scope, key) is the cross-replica
// guarantee: two replicas racing on one key both try the same upsert, and only one row version wins.
import type pg from 'pg';
import type { IdempotencyStore, Reservation } from './store.ts';

export const IDEMPOTENCY_DDL = `
  CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    run_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
  );
  CREATE INDEX IF NOT EXISTS idempotency_run ON idempotency_keys(run_id);
  CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency_keys(created_at);`;

export class PostgresIdempotencyStore implements IdempotencyStore {
  private ready: Promise<unknown>;

  constructor(private readonly pool: pg.Pool) {
    // Advisory lock: replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
    this.ready = this.withClient(async (c) => {
      await c.query('SELECT pg_advisory_lock(72017)');
      try {
        await c.query(IDEMPOTENCY_DDL);
      } finally {
        await c.query('SELECT pg_advisory_unlock(72017)');
      }
    });
  }

  private async withClient<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      return await fn(c);
    } finally {
      c.release();
    }
  }

  private async q(sql: string, params: unknown[]) {
    await this.ready;
    return this.pool.query(sql, params);
  }

  async reserve(scope: string, key: string, now: number, windowMs: number, staleMs: number): Promise<Reservation> {
    // Insert, or take over an entry that is out of its window or a reservation whose owner died. The
    // RETURNING row exists only when this statement won.
    const won = await this.q(
      `INSERT INTO idempotency_keys (scope, key, run_id, created_at) VALUES ($1, $2, NULL, $3)
       ON CONFLICT (scope, key) DO UPDATE SET run_id = NULL, created_at = EXCLUDED.created_at
         WHERE idempotency_keys.created_at <= $3 - $4::bigint
            OR (idempotency_keys.run_id IS NULL AND idempotency_keys.created_at <= $3 - $5::bigint)
       RETURNING 1`,
      [scope, key, now, windowMs, staleMs],
    );
    if (won.rowCount) return { won: true };
    const row = await this.q('SELECT run_id FROM idempotency_keys WHERE scope = $1 AND key = $2', [scope, key]);
    return { won: false, runId: (row.rows[0]?.run_id as string | null) ?? null };
  }

  async isLive(scope: string, key: string, now: number, windowMs: number): Promise<boolean> {
    const r = await this.q('SELECT 1 FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at > $3', [scope, key, now - windowMs]);
    return (r.rowCount ?? 0) > 0;
  }

  async bind(scope: string, key: string, runId: string): Promise<void> {
    await this.q('UPDATE idempotency_keys SET run_id = $3 WHERE scope = $1 AND key = $2', [scope, key, runId]);
  }

  async release(scope: string, key: string): Promise<void> {
    await this.q('DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2', [scope, key]);
  }

  async forgetRun(runId: string): Promise<void> {
    await this.q('DELETE FROM idempotency_keys WHERE run_id = $1', [runId]);
  }

  async purge(before: number): Promise<number> {
    return (await this.q('DELETE FROM idempotency_keys WHERE created_at < $1', [before])).rowCount ?? 0;
  }
}
