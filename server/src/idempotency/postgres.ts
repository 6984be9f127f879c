// Postgres side of idempotency, shared by every api replica: the unique key on (scope, key) is what makes a
// repeat that lands on another replica return the first run.
import type pg from 'pg';
import type { IdempotencyStore, Reservation } from './store.ts';

export class PgIdempotencyStore implements IdempotencyStore {
  constructor(private readonly pool: pg.Pool) {}

  async reserve(scope: string, key: string, now: number, windowMs: number, staleMs: number, fingerprint?: string): Promise<Reservation> {
    // One statement: insert, or take over an entry that is out of its window or was abandoned before binding.
    const { rows } = await this.pool.query(
      `INSERT INTO idempotency_keys AS k (scope, key, run_id, created_at, fingerprint) VALUES ($1, $2, NULL, $3, $6)
       ON CONFLICT (scope, key) DO UPDATE SET run_id = NULL, created_at = EXCLUDED.created_at, fingerprint = EXCLUDED.fingerprint
         WHERE k.created_at <= $3 - $4::bigint OR (k.run_id IS NULL AND k.created_at <= $3 - $5::bigint)
       RETURNING 1`,
      [scope, key, now, windowMs, staleMs, fingerprint ?? null],
    );
    if (rows.length) return { won: true };
    const held = await this.pool.query('SELECT run_id, fingerprint FROM idempotency_keys WHERE scope = $1 AND key = $2', [scope, key]);
    return { won: false, runId: held.rows[0]?.run_id ?? null, fingerprint: held.rows[0]?.fingerprint ?? undefined };
  }

  async isLive(scope: string, key: string, now: number, windowMs: number): Promise<boolean> {
    const { rowCount } = await this.pool.query(
      'SELECT 1 FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at > $3',
      [scope, key, now - windowMs],
    );
    return (rowCount ?? 0) > 0;
  }

  async bind(scope: string, key: string, runId: string): Promise<void> {
    await this.pool.query('UPDATE idempotency_keys SET run_id = $3 WHERE scope = $1 AND key = $2', [scope, key, runId]);
  }

  async release(scope: string, key: string): Promise<void> {
    await this.pool.query('DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2', [scope, key]);
  }

  async forgetRun(runId: string): Promise<void> {
    await this.pool.query('DELETE FROM idempotency_keys WHERE run_id = $1', [runId]);
  }

  async purge(before: number): Promise<number> {
    return (await this.pool.query('DELETE FROM idempotency_keys WHERE created_at < $1', [before])).rowCount ?? 0;
  }
}
