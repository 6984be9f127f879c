// Cluster settings on top of the common Config: flags win over environment, checked once at start.
import { z } from 'zod';
import { parseRegion, parseRegionSpecs, type RegionSpec } from '../cluster/regions.ts';

const ms = (def: number) => z.coerce.number().int().positive().default(def);

export const ClusterSchema = z.object({
  databaseUrl: z.string({ error: 'required' }).regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL'),
  storage: z.string({ error: 'required (file:DIR or s3://BUCKET[/PREFIX])' }).min(1),
  /** Worker lease and BullMQ lockDuration: a killed worker's run is taken over after about this long. */
  leaseMs: ms(15_000),
  stalledIntervalMs: ms(5_000),
  heartbeatMs: ms(1_000),
  heartbeatTtlMs: ms(5_000),
  sweepMs: ms(1_000),
  staleMs: ms(10_000),
  waitDeadlineMs: ms(60_000),
  /** A model without a live worker in any region this long fails its runs that waited as long; 0: never. */
  unservedWaitMs: z.coerce.number().int().nonnegative().default(600_000),
  regionQueueLimit: ms(1_000),
  backpressure: z.enum(['reject', 'queue']).default('reject'),
  globalQueueLimit: ms(10_000),
  retryAfterSeconds: ms(5),
});
export type ClusterConfig = z.infer<typeof ClusterSchema>;

export function loadClusterConfig(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): ClusterConfig {
  const raw = {
    databaseUrl: values['database-url'] ?? env.DATABASE_URL,
    storage: values.storage ?? env.KLEINSERVE_STORAGE,
    leaseMs: env.KLEINSERVE_LEASE_MS,
    stalledIntervalMs: env.KLEINSERVE_STALLED_INTERVAL_MS,
    heartbeatMs: env.KLEINSERVE_HEARTBEAT_MS,
    heartbeatTtlMs: env.KLEINSERVE_HEARTBEAT_TTL_MS,
    sweepMs: env.KLEINSERVE_SWEEP_MS,
    staleMs: env.KLEINSERVE_STALE_MS,
    waitDeadlineMs: env.KLEINSERVE_WAIT_DEADLINE_MS,
    unservedWaitMs: env.KLEINSERVE_UNSERVED_WAIT_MS,
    regionQueueLimit: values['queue-limit'] ?? env.KLEINSERVE_REGION_QUEUE_LIMIT,
    backpressure: values.backpressure ?? env.KLEINSERVE_BACKPRESSURE,
    globalQueueLimit: env.KLEINSERVE_GLOBAL_QUEUE_LIMIT,
    retryAfterSeconds: env.KLEINSERVE_RETRY_AFTER_S,
  };
  const parsed = ClusterSchema.safeParse(Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined)));
  if (!parsed.success) {
    const names: Record<string, string> = { databaseUrl: '--database-url / DATABASE_URL', storage: '--storage / KLEINSERVE_STORAGE' };
    const lines = parsed.error.issues.map((i) => `  ${names[String(i.path[0])] ?? i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid cluster configuration:\n${lines.join('\n')}`);
  }
  return parsed.data;
}

/** The api's regions: `--region NAME=URL` flags, else KLEINSERVE_REGIONS="a=redis://..,b=redis://..". */
export function apiRegions(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): RegionSpec[] {
  const flags = (values.region as string[] | undefined) ?? [];
  const list = flags.length ? flags : (env.KLEINSERVE_REGIONS ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (!list.length) throw new Error('give at least one --region NAME=REDIS_URL (the first is home)');
  return parseRegionSpecs(list);
}

export function workerRegion(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): RegionSpec {
  const name = (values.region as string[] | undefined)?.[0] ?? env.KLEINSERVE_REGION;
  const redis = (values.redis as string | undefined) ?? env.REDIS_URL;
  if (!name) throw new Error('a worker needs --region NAME');
  if (!redis) throw new Error('a worker needs --redis REDIS_URL');
  return parseRegion(name, redis);
}
