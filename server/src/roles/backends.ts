// The backends a role plugs into the run service and the HTTP layer: idempotency keys, quotas, retention and
// the HTTP server options. `serve` builds them over its SQLite run database and memory; `api` replicas over
// Postgres and (optionally) Redis. Everything above them is the same code in both roles.
import Database from 'better-sqlite3';
import type { FastifyServerOptions } from 'fastify';
import type { Redis } from 'ioredis';
import type pg from 'pg';
import type { Logger } from 'pino';
import { httpServerOptions } from '../http/server-options.ts';
import type { IdempotencyOptions } from '../idempotency/claim.ts';
import { PgIdempotencyStore } from '../idempotency/postgres.ts';
import { SqliteIdempotencyStore } from '../idempotency/sqlite.ts';
import type { IdempotencyStore } from '../idempotency/store.ts';
import type { BodyBudgetBounds, PolicyConfig } from '../policy-config.ts';
import { MemoryRateLimiter } from '../quotas/memory-rate-limiter.ts';
import type { Quota, RateLimiter } from '../quotas/rate-limiter.ts';
import { RedisRateLimiter } from '../quotas/redis-rate-limiter.ts';
import { PgRetentionStore } from '../retention/postgres.ts';
import { SqliteRetentionStore } from '../retention/sqlite.ts';
import type { RetentionStore } from '../retention/store.ts';
import { RetentionSweeper } from '../retention/sweeper.ts';
import type { RunEventBus } from '../runs/events.ts';
import type { ObjectStore } from '../storage/object-store.ts';

export interface PolicyBackends {
  quotas: RateLimiter;
  idempotency: IdempotencyOptions;
  retention: RetentionSweeper;
  http: Partial<FastifyServerOptions>;
  /** Bytes of request bodies held at once, per API key and in all (http/body-budget.ts). */
  bodyBudget: BodyBudgetBounds;
  /** The operator's price of one GPU-hour, for run costs. */
  pricePerGpuHour: number;
  close(): Promise<void>;
}

export const quotaOf = (cfg: PolicyConfig): Quota => ({
  maxConcurrent: cfg.maxConcurrentRuns,
  perMinute: cfg.runsPerMinute,
  slotTtlMs: cfg.slotTtlMs,
});

/** The stores that differ by role. */
export interface PolicyStores {
  idempotency: IdempotencyStore;
  retentionStore: RetentionStore;
  quotas: RateLimiter;
  close(): Promise<void> | void;
}

export interface PolicyDeps {
  cfg: PolicyConfig;
  objects: ObjectStore;
  bus: RunEventBus;
  logger: Logger;
  waitCapSeconds: number;
}

export function assemblePolicy(deps: PolicyDeps, stores: PolicyStores): PolicyBackends {
  const { cfg } = deps;
  const retention = new RetentionSweeper({
    store: stores.retentionStore,
    objects: deps.objects,
    idempotency: stores.idempotency,
    bus: deps.bus,
    logger: deps.logger.child({ part: 'retention' }),
    outputTtlMs: cfg.outputTtlMs,
    recordTtlMs: cfg.recordTtlMs,
    idempotencyWindowMs: cfg.idempotencyWindowMs,
    intervalMs: cfg.sweepIntervalMs,
    orphanGraceMs: cfg.orphanGraceMs,
  });
  return {
    quotas: stores.quotas,
    idempotency: { store: stores.idempotency, windowMs: cfg.idempotencyWindowMs },
    retention,
    http: httpServerOptions(cfg, deps.waitCapSeconds),
    bodyBudget: { bodyBytesPerKey: cfg.bodyBytesPerKey, bodyBytesInFlight: cfg.bodyBytesInFlight },
    pricePerGpuHour: cfg.pricePerGpuHour,
    async close() {
      await retention.stop();
      await stores.close();
    },
  };
}

/** `serve`: SQLite (its own connection to the run database; WAL lets it sit next to the run store's) and memory. */
export function embeddedPolicy(deps: PolicyDeps & { dbFile: string }): PolicyBackends {
  const db = new Database(deps.dbFile);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  return assemblePolicy(deps, {
    idempotency: new SqliteIdempotencyStore(db),
    retentionStore: new SqliteRetentionStore(db),
    quotas: new MemoryRateLimiter(quotaOf(deps.cfg)),
    close: () => {
      db.close();
    },
  });
}

/**
 * `api`: Postgres for idempotency and retention, shared by every replica. Quota counters shared by all
 * replicas need their own Redis (not a region's: a region outage must not take admission down with it);
 * without one each replica counts on its own (N replicas => N x quota).
 */
export function clusterPolicy(deps: PolicyDeps & { pool: pg.Pool; quotaRedis: Redis | null }): PolicyBackends {
  const quota = quotaOf(deps.cfg);
  return assemblePolicy(deps, {
    idempotency: new PgIdempotencyStore(deps.pool),
    retentionStore: new PgRetentionStore(deps.pool),
    quotas: deps.quotaRedis ? new RedisRateLimiter(deps.quotaRedis, quota) : new MemoryRateLimiter(quota),
    close: () => {
      deps.quotaRedis?.disconnect();
    },
  });
}
