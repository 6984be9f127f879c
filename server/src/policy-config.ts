// Operating policy: per-key quotas, the idempotency window, retention, the HTTP slow-client guards, the
// request-body budget and the price of GPU time, read from the environment once at start and checked with zod
// so a typo fails loudly.
import { z } from 'zod';

const int = (def: number) => z.coerce.number().int().nonnegative().default(def);

export const PolicyConfigSchema = z.object({
  /** Per API key: runs not yet terminal (queued ones included). 0 turns the check off. */
  maxConcurrentRuns: int(64),
  /** Per API key: run creations per minute (fixed one-minute window). 0 turns the check off. */
  runsPerMinute: int(600),
  /** A concurrency slot whose end was never seen (a lost event, a dead replica) frees itself after this. */
  slotTtlMs: int(30 * 60_000),
  idempotencyWindowMs: int(24 * 3600_000),
  outputTtlMs: int(24 * 3600_000),
  recordTtlMs: int(30 * 24 * 3600_000),
  sweepIntervalMs: int(10 * 60_000),
  /** Temp files, and files of runs that have no record, are swept once older than this. */
  orphanGraceMs: int(15 * 60_000),
  /** Slow-client guards: whole request (headers + body) and headers alone must arrive within these. */
  requestTimeoutMs: int(60_000),
  headersTimeoutMs: int(15_000),
  maxHeaderBytes: int(16 * 1024),
  keepAliveTimeoutMs: int(5_000),
  /**
   * Request-body budget: bytes of request bodies one API key, and all callers together, may have in flight at
   * once (each body counted at its declared length, or the body limit when chunked). A body costs a few times
   * its size while it is parsed and its images decoded, and quotas count runs, not bytes. 0 turns a bound off.
   */
  bodyBytesPerKey: int(256 * 1024 * 1024),
  bodyBytesInFlight: int(1024 * 1024 * 1024),
  /** What one GPU-hour costs the operator; a run's `cost` is its GPU time at this price. 0: runs cost nothing. */
  pricePerGpuHour: z.coerce.number().nonnegative().default(0),
});

export type PolicyConfig = z.infer<typeof PolicyConfigSchema>;
export type BodyBudgetBounds = Pick<PolicyConfig, 'bodyBytesPerKey' | 'bodyBytesInFlight'>;

const ENV: Record<keyof PolicyConfig, string> = {
  maxConcurrentRuns: 'KLEINSERVE_MAX_CONCURRENT_RUNS',
  runsPerMinute: 'KLEINSERVE_RUNS_PER_MINUTE',
  slotTtlMs: 'KLEINSERVE_RATE_SLOT_TTL_MS',
  idempotencyWindowMs: 'KLEINSERVE_IDEMPOTENCY_WINDOW_MS',
  outputTtlMs: 'KLEINSERVE_OUTPUT_TTL_MS',
  recordTtlMs: 'KLEINSERVE_RECORD_TTL_MS',
  sweepIntervalMs: 'KLEINSERVE_SWEEP_INTERVAL_MS',
  orphanGraceMs: 'KLEINSERVE_ORPHAN_GRACE_MS',
  requestTimeoutMs: 'KLEINSERVE_REQUEST_TIMEOUT_MS',
  headersTimeoutMs: 'KLEINSERVE_HEADERS_TIMEOUT_MS',
  maxHeaderBytes: 'KLEINSERVE_MAX_HEADER_BYTES',
  keepAliveTimeoutMs: 'KLEINSERVE_KEEP_ALIVE_TIMEOUT_MS',
  bodyBytesPerKey: 'KLEINSERVE_BODY_BYTES_PER_KEY',
  bodyBytesInFlight: 'KLEINSERVE_BODY_BYTES_IN_FLIGHT',
  pricePerGpuHour: 'KLEINSERVE_PRICE_PER_GPU_HOUR',
};

export function loadPolicyConfig(env: NodeJS.ProcessEnv = process.env): PolicyConfig {
  const raw = Object.fromEntries(
    Object.entries(ENV)
      .map(([k, name]) => [k, env[name]])
      .filter(([, v]) => v !== undefined && v !== ''),
  );
  const parsed = PolicyConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${ENV[i.path[0] as keyof PolicyConfig] ?? i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid configuration:\n${lines.join('\n')}`);
  }
  return parsed.data;
}

/**
 * A request-body bound must hold one body at the body limit, or a request the limit allows could never be
 * admitted even on an idle server; checked at start, where both are known.
 */
export function checkBodyBudget(cfg: BodyBudgetBounds, bodyLimitBytes: number): void {
  const lines = (['bodyBytesPerKey', 'bodyBytesInFlight'] as const)
    .filter((k) => cfg[k] !== 0 && cfg[k] < bodyLimitBytes)
    .map((k) => `  ${ENV[k]}: ${cfg[k]} is below the ${bodyLimitBytes}-byte request body limit, so a body the limit allows could never be admitted; set at least ${bodyLimitBytes}, or 0 to turn the bound off`);
  if (lines.length) throw new Error(`invalid configuration:\n${lines.join('\n')}`);
}
