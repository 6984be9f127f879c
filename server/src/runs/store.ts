// Storage seams. Lifecycle and dispatch code only ever see these async interfaces, so cluster mode can put a
// Postgres store behind them without touching the state machine.
import type { RunPatch, RunRecord, RunStatus } from './types.ts';

export interface ListQuery {
  limit: number;
  /** Runs older than this id (the next page); runs are listed newest first (UUID v7 order). */
  cursor?: string;
  /** Runs newer than this id (the previous page), still answered newest first. */
  before?: string;
  status?: RunStatus[];
}

export interface NewDelivery {
  run_id: string;
  url: string;
  event: string;
  body: string;
  /** JSON of the run's DeliverySigning; null/absent: the server's HMAC. */
  signing?: string | null;
}

export interface Delivery extends NewDelivery {
  id: number;
  attempts: number;
  next_attempt_at: number;
  state: 'pending' | 'delivered' | 'failed';
  last_error: string | null;
}

export interface RunStore {
  insert(run: RunRecord): Promise<void>;
  get(id: string): Promise<RunRecord | null>;
  list(q: ListQuery): Promise<RunRecord[]>;
  /**
   * Applies `patch` only if the run is currently in one of `from`; returns the updated run or null. This is
   * the single guard that makes each transition (and thus completion) happen at most once. A terminal
   * transition may carry a callback delivery, written in the same transaction so it cannot be lost.
   */
  transition(id: string, from: RunStatus[], patch: RunPatch & { status: RunStatus }, delivery?: NewDelivery): Promise<RunRecord | null>;
  /** Atomically moves the oldest queued run (of one of `modelIds`, when given) to `dispatching` and returns it. */
  claimNext(modelIds?: string[]): Promise<RunRecord | null>;
  /** Runs left in `dispatching`/`running` by a process that died. */
  listInFlight(): Promise<RunRecord[]>;
  /** Queued runs of any run model_id but `modelIds`, oldest first: runs that no dispatcher taking only those claims. */
  listQueuedExcept(modelIds: string[]): Promise<RunRecord[]>;
  countByStatus(): Promise<Record<RunStatus, number>>;
  close(): Promise<void>;
}

export interface DeliveryStore {
  /**
   * Pending deliveries due by `now`, oldest first. `skipUrlPatterns` (lower-cased SQL LIKE patterns, `\`
   * escapes) leaves out receivers that already hold their share of delivery slots.
   */
  dueDeliveries(now: number, limit: number, skipUrlPatterns?: string[]): Promise<Delivery[]>;
  /** Gives back deliveries taken by dueDeliveries but not attempted, so they are due again at once. */
  releaseDeliveries?(ids: number[]): Promise<void>;
  nextDueAt(): Promise<number | null>;
  /** `request_id`: the Runflow-Request-Id the attempt was sent with, kept on the delivery (the last attempt's). */
  recordAttempt(id: number, result: { delivered: boolean; next_attempt_at: number | null; error: string | null; request_id?: string }): Promise<void>;
  getDeliveries(runId: string): Promise<Delivery[]>;
}
