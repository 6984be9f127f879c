// The idempotency seam. The store's unique key on (api key hash, idempotency key) is what makes a repeated
// create return the original run, even when the two requests land on different API replicas.
export type Reservation =
  /** This request owns the key and must create the run (then bind it) or release the key. */
  | { won: true }
  /**
   * Another request owns the key; `runId` is null while that request is still creating its run, and
   * `fingerprint` is the hash of what that request asked for.
   */
  | { won: false; runId: string | null; fingerprint?: string };

export interface IdempotencyStore {
  /**
   * Atomically takes (scope, key) unless a live entry holds it. An entry is live for `windowMs`; an entry
   * with no run yet is taken over after `staleMs` (its owner died between reserving and creating).
   */
  reserve(scope: string, key: string, now: number, windowMs: number, staleMs: number, fingerprint?: string): Promise<Reservation>;
  /** Whether a live entry holds (scope, key): the request is a repeat of one made before. */
  isLive(scope: string, key: string, now: number, windowMs: number): Promise<boolean>;
  bind(scope: string, key: string, runId: string): Promise<void>;
  release(scope: string, key: string): Promise<void>;
  /** Forgets every key pointing at a run that is being erased. */
  forgetRun(runId: string): Promise<void>;
  /** Drops entries older than the window. */
  purge(before: number): Promise<number>;
}
