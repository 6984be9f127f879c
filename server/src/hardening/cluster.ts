// The cluster `api` role's hardening: idempotency and retention in Postgres (shared by every replica),
// quota counters in Redis, so limits hold across replicas.
import type pg from 'pg';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { PostgresIdempotencyStore } from '../idempotency/postgres.ts';
import { RedisRateLimiter } from '../limits/redis-rate-limiter.ts';
import { PostgresRetentionStore } from '../retention/postgres.ts';
import { RetentionSweeper } from '../retention/sweeper.ts';
import type { RunEventBus } from '../runs/events.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import type { HardeningConfig } from './config.ts';
import { httpLimitOptions } from './http-limits.ts';
import { quotaOf, type AppHardening } from './index.ts';

export function createClusterHardening(deps: {
  cfg: HardeningConfig;
  pool: pg.Pool;
  redis: Redis;
  objects: ObjectStore;
  bus: RunEventBus;
  logger: Logger;
  waitCapSeconds: number;
}): AppHardening {
  const { cfg } = deps;
  const idempotencyStore = new PostgresIdempotencyStore(deps.pool);
  const retention = new RetentionSweeper({
    store: new PostgresRetentionStore(deps.pool),
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
    limiter: new RedisRateLimiter(deps.redis, quotaOf(cfg)),
    idempotency: { store: idempotencyStore, windowMs: cfg.idempotencyWindowMs },
    retention,
    http: httpLimitOptions(cfg, deps.waitCapSeconds),
    close: () => retention.stop(),
  };
}
