// Retention: outputs expire after `outputTtlMs`, run records after `recordTtlMs`, and failed or canceled
// runs keep no files at all. Only terminal runs are touched, so a sweep can run at any time next to runs
// in flight; every step is idempotent, so an interrupted sweep just resumes on the next tick.
import type { Logger } from 'pino';
import type { IdempotencyStore } from '../idempotency/store.ts';
import type { RunEventBus } from '../runs/events.ts';
import type { RunRecord } from '../runs/types.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { eraseRunObjects } from './erase.ts';
import type { RetentionStore } from './store.ts';

export interface SweeperDeps {
  store: RetentionStore;
  objects: ObjectStore;
  idempotency: IdempotencyStore;
  bus: RunEventBus;
  logger: Logger;
  outputTtlMs: number;
  recordTtlMs: number;
  idempotencyWindowMs: number;
  intervalMs: number;
}

const BATCH = 200;

export class RetentionSweeper {
  private timer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private running: Promise<unknown> | null = null;

  constructor(private readonly deps: SweeperDeps) {}

  start(): void {
    // A failed or canceled run has no use for its inputs or any partial output: erase them at once.
    this.unsubscribe = this.deps.bus.subscribe('*', (ev) => {
      if (ev.type === 'status' && (ev.run.status === 'failed' || ev.run.status === 'canceled')) {
        void this.erase(ev.run).catch((err) => this.deps.logger.warn({ err, run_id: ev.run.id }, 'erasing run objects failed'));
      }
    });
    if (this.deps.intervalMs > 0) {
      this.timer = setInterval(() => void this.sweep().catch((err) => this.deps.logger.error({ err }, 'retention sweep failed')), this.deps.intervalMs);
      this.timer.unref();
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
    await this.running;
  }

  /** One pass; concurrent callers share it. */
  sweep(now = Date.now()): Promise<{ erased: number; deleted: number }> {
    this.running ??= this.pass(now).finally(() => (this.running = null));
    return this.running as Promise<{ erased: number; deleted: number }>;
  }

  /** Erases a terminal run's objects and its record (retention, and DELETE /v1/runs/{id}). */
  async delete(run: RunRecord): Promise<boolean> {
    await this.erase(run);
    await this.deps.idempotency.forgetRun(run.id);
    return this.deps.store.deleteRecord(run.id);
  }

  private async erase(run: RunRecord): Promise<void> {
    await eraseRunObjects(this.deps.objects, run);
    await this.deps.store.markErased(run.id, Date.now());
  }

  private async pass(now: number): Promise<{ erased: number; deleted: number }> {
    const { store, outputTtlMs, recordTtlMs } = this.deps;
    let erased = 0;
    let deleted = 0;
    // A grace minute for failed/canceled runs: the terminal event normally erased them already, and a
    // dispatcher that lost a race with cancel removes its own late output.
    for (const batch of [
      () => store.unerased(['failed', 'canceled'], now - 60_000, BATCH),
      () => store.unerased(['succeeded'], now - outputTtlMs, BATCH),
    ]) {
      for (let runs = await batch(); runs.length; runs = await batch()) {
        for (const run of runs) await this.erase(run);
        erased += runs.length;
      }
    }
    for (;;) {
      const runs = await store.expiredRecords(now - recordTtlMs, BATCH);
      let n = 0;
      for (const run of runs) if (await this.delete(run)) n++;
      deleted += n;
      if (n === 0) break;
    }
    await this.deps.idempotency.purge(now - this.deps.idempotencyWindowMs);
    if (erased || deleted) this.deps.logger.info({ erased, deleted }, 'retention sweep');
    return { erased, deleted };
  }
}
