// The hardening seams (idempotency, quotas, retention) for the api role, over Postgres and Redis, in the
// same AppHardening shape the embedded role builds over SQLite (hardening/index.ts).
import type { Redis } from 'ioredis';
import type pg from 'pg';
import { assembleHardening, quotaOf, type AppHardening, type HardeningDeps } from '../hardening/index.ts';
import type { IdempotencyStore, Reservation } from '../idempotency/store.ts';
import { MemoryRateLimiter } from '../limits/memory-rate-limiter.ts';
import { RedisRateLimiter } from '../limits/redis-rate-limiter.ts';
import type { RetentionStore } from '../retention/store.ts';
import { TERMINAL, type RunRecord, type RunStatus } from '../runs/types.ts';

const TERMINAL_LIST = [...TERMINAL];

export class PgIdempotencyStore implements IdempotencyStore {
  constructor(private readonly pool: pg.Pool) {}

  async reserve(scope: string, key: string, now: number, windowMs: number, staleMs: number): Promise<Reservation> {
    // One statement: insert, or take over an entry that is out of its window or was abandoned before binding.
    const { rows } = await this.pool.query(
      `INSERT INTO idempotency_keys AS k (scope, key, run_id, created_at) VALUES ($1, $2, NULL, $3)
       ON CONFLICT (scope, key) DO UPDATE SET run_id = NULL, created_at = EXCLUDED.created_at
         WHERE k.created_at <= $3 - $4::bigint OR (k.run_id IS NULL AND k.created_at <= $3 - $5::bigint)
       RETURNING 1`,
      [scope, key, now, windowMs, staleMs],
    );
    if (rows.length) return { won: true };
    const held = await this.pool.query('SELECT run_id FROM idempotency_keys WHERE scope = $1 AND key = $2', [scope, key]);
    return { won: false, runId: held.rows[0]?.run_id ?? null };
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

export class PgRetentionStore implements RetentionStore {
  constructor(private readonly pool: pg.Pool) {}

  async unerased(statuses: RunStatus[], before: number, limit: number): Promise<RunRecord[]> {
    const terminal = statuses.filter((s) => TERMINAL.has(s));
    if (!terminal.length) return [];
    const { rows } = await this.pool.query(
      `SELECT * FROM runs WHERE status = ANY($1) AND completed_at < $2
         AND NOT EXISTS (SELECT 1 FROM run_erasures e WHERE e.run_id = runs.id)
       ORDER BY completed_at LIMIT $3`,
      [terminal, before, limit],
    );
    return rows;
  }

  async markErased(runId: string, at: number): Promise<void> {
    await this.pool.query('INSERT INTO run_erasures (run_id, erased_at) VALUES ($1, $2) ON CONFLICT DO NOTHING', [runId, at]);
  }

  async expiredRecords(before: number, limit: number): Promise<RunRecord[]> {
    const { rows } = await this.pool.query(
      'SELECT * FROM runs WHERE status = ANY($1) AND created_at < $2 ORDER BY created_at LIMIT $3',
      [TERMINAL_LIST, before, limit],
    );
    return rows;
  }

  async deleteRecord(runId: string): Promise<boolean> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const gone = ((await c.query('DELETE FROM runs WHERE id = $1 AND status = ANY($2)', [runId, TERMINAL_LIST])).rowCount ?? 0) > 0;
      if (gone) {
        await c.query(`DELETE FROM deliveries WHERE run_id = $1 AND state != 'pending'`, [runId]);
        await c.query('DELETE FROM run_erasures WHERE run_id = $1', [runId]);
        await c.query('DELETE FROM run_executions WHERE run_id = $1', [runId]);
      }
      await c.query('COMMIT');
      return gone;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }
}

export function createClusterHardening(
  deps: HardeningDeps & {
    pool: pg.Pool;
    /** Shared quota counters; without it each replica enforces the quota on its own (N replicas => N x quota). */
    quotaRedis: Redis | null;
  },
): AppHardening {
  const quota = quotaOf(deps.cfg);
  return assembleHardening(deps, {
    idempotency: new PgIdempotencyStore(deps.pool),
    retentionStore: new PgRetentionStore(deps.pool),
    limiter: deps.quotaRedis ? new RedisRateLimiter(deps.quotaRedis, quota) : new MemoryRateLimiter(quota),
    close: () => {
      deps.quotaRedis?.disconnect();
    },
  });
}
