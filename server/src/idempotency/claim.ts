// Idempotency claims: the first request with a key (per caller) creates the run, a repeat within the window
// gets that run back, a repeat that arrives while the first is still creating waits for it.
import { ServiceError } from '../errors.ts';
import type { IdempotencyStore } from './store.ts';

export interface IdempotencyOptions {
  store: IdempotencyStore;
  windowMs: number;
  /** How long a reservation without a run may block others: longer than any intake (URL checks, decoding). */
  staleMs?: number;
  /** How long a repeat waits for the first request to finish creating its run. */
  waitMs?: number;
}

export type Claim =
  | { kind: 'none' }
  | { kind: 'existing'; runId: string }
  | { kind: 'new'; bind(runId: string): Promise<void>; release(): Promise<void> };

export const MAX_IDEMPOTENCY_KEY = 255;

/**
 * `fingerprint` is a hash of what the request asks for: a repeat that asks for something else is refused
 * (409 naming the key) rather than answered with a run it did not ask for.
 */
export async function claimIdempotency(opts: IdempotencyOptions, scope: string, key: string | null, fingerprint?: string): Promise<Claim> {
  if (key === null) return { kind: 'none' };
  const staleMs = opts.staleMs ?? 120_000;
  const deadline = Date.now() + (opts.waitMs ?? 30_000);
  for (;;) {
    const r = await opts.store.reserve(scope, key, Date.now(), opts.windowMs, staleMs, fingerprint);
    if (!r.won && fingerprint && r.fingerprint && r.fingerprint !== fingerprint) {
      throw new ServiceError('conflict', 'IDEMPOTENCY_KEY_REUSED', `Idempotency-Key ${JSON.stringify(key)} was already used with a different request`, [
        { field: 'header.idempotency-key', reason: `${JSON.stringify(key)} was already used with a different request body; use a new key for a new request` },
      ]);
    }
    if (r.won) {
      return {
        kind: 'new',
        bind: (runId) => opts.store.bind(scope, key, runId),
        release: () => opts.store.release(scope, key),
      };
    }
    if (r.runId) return { kind: 'existing', runId: r.runId };
    if (Date.now() > deadline) {
      throw new ServiceError('conflict', 'IDEMPOTENCY_CONFLICT', 'a request with the same idempotency key is still being processed; retry shortly', [], 1);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
