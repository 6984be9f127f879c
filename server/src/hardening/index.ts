// What the routes need from the hardening parts, and how the embedded `serve` role builds them over its
// SQLite run database. A cluster `api` role builds the same shape over Postgres and Redis.
import Database from 'better-sqlite3';
import type { FastifyServerOptions } from 'fastify';
import type { Logger } from 'pino';
import type { IdempotencyOptions } from '../idempotency/claim.ts';
import { SqliteIdempotencyStore } from '../idempotency/sqlite.ts';
import { MemoryRateLimiter } from '../limits/memory-rate-limiter.ts';
import type { Quota, RateLimiter } from '../limits/rate-limiter.ts';
import { SqliteRetentionStore } from '../retention/sqlite.ts';
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

export function createEmbeddedHardening(deps: {
  cfg: HardeningConfig;
  dbFile: string;
  objects: ObjectStore;
  bus: RunEventBus;
  logger: Logger;
  waitCapSeconds: number;
}): AppHardening {
  const { cfg } = deps;
  // Its own connection to the run database: WAL lets it sit next to the run store's.
  const db = new Database(deps.dbFile);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  const idempotencyStore = new SqliteIdempotencyStore(db);
  const retention = new RetentionSweeper({
    store: new SqliteRetentionStore(db),
    objects: deps.objects,
    idempotency: idempotencyStore,
    bus: deps.bus,
    logger: deps.logger.child({ part: 'retention' }),
    outputTtlMs: cfg.outputTtlMs,
    recordTtlMs: cfg.recordTtlMs,
    idempotencyWindowMs: cfg.idempotencyWindowMs,
    intervalMs: cfg.sweepIntervalMs,
  });
  return {
    limiter: new MemoryRateLimiter(quotaOf(cfg)),
    idempotency: { store: idempotencyStore, windowMs: cfg.idempotencyWindowMs },
    retention,
    http: httpLimitOptions(cfg, deps.waitCapSeconds),
    async close() {
      await retention.stop();
      db.close();
    },
  };
}
