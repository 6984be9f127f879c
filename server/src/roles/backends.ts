// What the routes need from the hardening parts, and how the embedded `serve` role builds them over its
// SQLite run database. A cluster `api` role builds the same shape over Postgres and Redis.
import Database from 'better-sqlite3';
import type { FastifyServerOptions } from 'fastify';
import type { Logger } from 'pino';
import type { IdempotencyOptions } from '../idempotency/claim.ts';
import type { IdempotencyStore } from '../idempotency/store.ts';
import { SqliteIdempotencyStore } from '../idempotency/sqlite.ts';
import { MemoryRateLimiter } from '../limits/memory-rate-limiter.ts';
import type { Quota, RateLimiter } from '../limits/rate-limiter.ts';
import { SqliteRetentionStore } from '../retention/sqlite.ts';
import type { RetentionStore } from '../retention/store.ts';
import { RetentionSweeper } from '../retention/sweeper.ts';
import type { RunEventBus } from '../runs/events.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import type { HardeningConfig } from './config.ts';
import { httpLimitOptions } from './http-limits.ts';

export interface AppHardening {
  limiter: RateLimiter;
  idempotency: IdempotencyOptions;
  retention: RetentionSweeper;
  http: Partial<FastifyServerOptions>;
  close(): Promise<void>;
}

export const quotaOf = (cfg: HardeningConfig): Quota => ({
  maxConcurrent: cfg.maxConcurrentRuns,
  perMinute: cfg.runsPerMinute,
  slotTtlMs: cfg.slotTtlMs,
});

/** The parts that differ by backend (SQLite and memory for `serve`, Postgres and Redis for `api`); the rest is one shape. */
export interface HardeningBackend {
  idempotency: IdempotencyStore;
  retentionStore: RetentionStore;
  limiter: RateLimiter;
  close(): Promise<void> | void;
}

export interface HardeningDeps {
  cfg: HardeningConfig;
  objects: ObjectStore;
  bus: RunEventBus;
  logger: Logger;
  waitCapSeconds: number;
}

export function assembleHardening(deps: HardeningDeps, backend: HardeningBackend): AppHardening {
  const { cfg } = deps;
  const retention = new RetentionSweeper({
    store: backend.retentionStore,
    objects: deps.objects,
    idempotency: backend.idempotency,
    bus: deps.bus,
    logger: deps.logger.child({ part: 'retention' }),
    outputTtlMs: cfg.outputTtlMs,
    recordTtlMs: cfg.recordTtlMs,
    idempotencyWindowMs: cfg.idempotencyWindowMs,
    intervalMs: cfg.sweepIntervalMs,
  });
  return {
    limiter: backend.limiter,
    idempotency: { store: backend.idempotency, windowMs: cfg.idempotencyWindowMs },
    retention,
    http: httpLimitOptions(cfg, deps.waitCapSeconds),
    async close() {
      await retention.stop();
      await backend.close();
    },
  };
}

export function createEmbeddedHardening(deps: HardeningDeps & { dbFile: string }): AppHardening {
  // Its own connection to the run database: WAL lets it sit next to the run store's.
  const db = new Database(deps.dbFile);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  return assembleHardening(deps, {
    idempotency: new SqliteIdempotencyStore(db),
    retentionStore: new SqliteRetentionStore(db),
    limiter: new MemoryRateLimiter(quotaOf(deps.cfg)),
    close: () => {
      db.close();
    },
  });
}
