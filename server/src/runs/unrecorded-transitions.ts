// Run state changes the store refused (a full disk, a database gone read-only). Each is kept here and
// tried again every `intervalMs` until the store takes it, so a run whose final state could not be written
// still ends (failed, succeeded, canceled or requeued) as soon as writes work again, with no restart.
// Retrying is safe because every transition is conditional: once the run has moved on, it simply no-ops.
import type { Logger } from 'pino';
import { StorageWriteError } from '../storage/write-failure.ts';
import type { NewDelivery, RunStore } from './store.ts';
import type { RunPatch, RunRecord, RunStatus } from './types.ts';

interface Unrecorded {
  from: RunStatus[];
  patch: RunPatch & { status: RunStatus };
  delivery?: NewDelivery;
}

export class UnrecordedTransitions {
  /** By run id; the first change held for a run is the one that is retried (later ones were its fallbacks). */
  private readonly pending = new Map<string, Unrecorded>();
  private timer: NodeJS.Timeout | null = null;
  private retrying = false;

  constructor(
    private readonly store: RunStore,
    /** Called with the run once its change is recorded (the lifecycle publishes it). */
    private readonly recorded: (run: RunRecord) => void,
    private readonly logger: Logger,
    private readonly intervalMs = 1000,
  ) {}

  get size(): number {
    return this.pending.size;
  }

  hold(runId: string, from: RunStatus[], patch: RunPatch & { status: RunStatus }, delivery?: NewDelivery): void {
    if (this.pending.has(runId)) return;
    this.pending.set(runId, { from, patch, delivery });
    this.logger.error({ run_id: runId, status: patch.status }, 'run state could not be recorded; retrying until storage accepts it');
    this.timer ??= setInterval(() => void this.retry(), this.intervalMs);
    this.timer.unref();
  }

  /** One pass over the held changes; returns how many are still waiting. */
  async retry(): Promise<number> {
    if (this.retrying) return this.pending.size;
    this.retrying = true;
    try {
      for (const [runId, t] of this.pending) {
        try {
          const run = await this.store.transition(runId, t.from, t.patch, t.delivery);
          this.pending.delete(runId);
          if (run) {
            this.logger.warn({ run_id: runId, status: run.status }, 'run state recorded after storage recovered');
            this.recorded(run);
          }
        } catch (err) {
          if (err instanceof StorageWriteError) break; // still refused: the rest would be too, try again later
          this.pending.delete(runId);
          this.logger.error({ err, run_id: runId }, 'giving up on recording a run state change');
        }
      }
    } finally {
      this.retrying = false;
      if (this.pending.size === 0 && this.timer) {
        clearInterval(this.timer);
        this.timer = null;
      }
    }
    return this.pending.size;
  }
}
