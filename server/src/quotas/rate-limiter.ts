// Per-API-key quotas on run creation: runs not yet terminal (a concurrency slot each) and creations per
// minute. One interface, an in-memory implementation for `serve` and a Redis one for cluster replicas.
export interface Quota {
  /** 0 = unlimited. */
  maxConcurrent: number;
  /** 0 = unlimited. */
  perMinute: number;
  /** A slot whose run end was never reported frees itself after this long. */
  slotTtlMs: number;
}

export type Admission =
  | { ok: true; slotId: string }
  | { ok: false; reason: 'concurrency' | 'rate'; retryAfterS: number; limit: number };

export interface RateLimiter {
  /** Counts one creation for `subject` and takes a concurrency slot, or refuses without counting. */
  admit(subject: string, now?: number): Promise<Admission>;
  /** The slot now belongs to a created run; it is freed by `finished(runId)`. */
  bind(subject: string, slotId: string, runId: string): Promise<void>;
  /** The request created no live run (refused, failed, or answered with a terminal run). */
  release(subject: string, slotId: string): Promise<void>;
  finished(runId: string): Promise<void>;
  close(): Promise<void>;
}

/** Seconds left in the current one-minute window, at least 1. */
export const secondsToNextMinute = (now: number): number => Math.max(1, Math.ceil((60_000 - (now % 60_000)) / 1000));
