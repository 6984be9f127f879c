// Retention: outputs expire after `outputTtlMs`, run records after `recordTtlMs`, and failed or canceled
// runs keep no files at all. Only terminal runs are touched, so a sweep can run at any time next to runs
// in flight; every step is idempotent, so an interrupted sweep just resumes on the next tick. Files no run
// owns (a create whose record could not be written, a write cut short by a full disk) are removed once
// they are older than `orphanGraceMs`, which outlasts any write still on its way to its run record.
import fsp from 'node:fs/promises';
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
  /** Temp files and files of runs with no record are removed once older than this (default 15 min). */
  orphanGraceMs?: number;
}

const BATCH = 200;
const ORPHAN_GRACE_MS = 15 * 60_000;
/** Object prefixes laid out as `<prefix>/<run id>/...`. */
const RUN_PREFIXES = ['inputs', 'outputs'];

export interface SweepResult {
  erased: number;
  deleted: number;
  /** Temp files and files of runs without a record that were removed. */
  orphans: number;
}

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
  sweep(now = Date.now()): Promise<SweepResult> {
    this.running ??= this.pass(now).finally(() => (this.running = null));
    return this.running as Promise<SweepResult>;
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

  private async pass(now: number): Promise<SweepResult> {
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
    const orphans = await this.removeOrphans(now - (this.deps.orphanGraceMs ?? ORPHAN_GRACE_MS));
    if (erased || deleted || orphans) this.deps.logger.info({ erased, deleted, orphans }, 'retention sweep');
    return { erased, deleted, orphans };
  }

  /** Removes temp files and the files of runs that have no record, all older than `before`. */
  private async removeOrphans(before: number): Promise<number> {
    const { objects, store } = this.deps;
    let removed = (await objects.removeTemporary?.(before)) ?? 0;
    if (!objects.list) return removed;
    for (const prefix of RUN_PREFIXES) {
      // Keys arrive grouped by run folder; runs are checked against the store a batch at a time.
      let batch = new Map<string, { keys: string[]; newest: number }>();
      const flush = async () => {
        const owned = await store.existingRuns([...batch.keys()]);
        for (const [runId, { keys, newest }] of batch) {
          if (owned.has(runId) || newest >= before) continue;
          await Promise.all(keys.map((k) => objects.delete(k)));
          if (objects.localPath) await fsp.rmdir(objects.localPath(`${prefix}/${runId}`)).catch(() => {});
          removed += keys.length;
        }
        batch = new Map();
      };
      for await (const { key, modifiedAt } of objects.list(prefix)) {
        const runId = key.split('/')[1];
        if (!runId) continue;
        const group = batch.get(runId);
        if (group) {
          group.keys.push(key);
          group.newest = Math.max(group.newest, modifiedAt);
        } else {
          if (batch.size >= BATCH) await flush();
          batch.set(runId, { keys: [key], newest: modifiedAt });
        }
      }
      await flush();
    }
    return removed;
  }
}
