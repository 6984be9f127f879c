// Runs on every api replica, every sweep interval, after refreshing region states:
// Each step is taken per model, over the regions as that model's runs see them (its workers, its queue):
//  - failover: queued runs (and runs whose worker lease expired) of an unhealthy region move to a healthy one;
//  - placement: runs parked by backpressure get a region once one has room;
//  - repair: runs that should be in a queue but are not (an api died between insert and enqueue, a Redis
//    restarted empty, a worker shut down and released its run) are enqueued again;
//  - give up: runs of a model that no reachable region has had a live worker for during `unservedWaitMs` (as this
//    replica saw it), and that have waited that long themselves, fail MODEL_UNAVAILABLE rather than wait forever.
// Every step is a guarded UPDATE plus an idempotent enqueue (job id = run id), so replicas may overlap.
import type { Logger } from 'pino';
import { enqueueRun } from '../dispatch/bullmq-queue.ts';
import type { RunLifecycle } from '../runs/lifecycle.ts';
import type { PostgresStore } from '../runs/postgres-store.ts';
import type { ClusterMetrics } from './metrics.ts';
import { KLEIN_MODELS, runModelIds } from '../models/registry.ts';
import { chooseRegion, statesFor, type Placement, type PlacementOptions } from './placement.ts';
import { hasLiveWorkers, type RegionMonitor, type RegionState } from './region-monitor.ts';
import { withTimeout } from './redis.ts';

export interface SweeperOptions {
  intervalMs: number;
  /** A queued run older than this without progress is enqueued again (a no-op if its job exists). */
  staleMs: number;
  batch: number;
  placement: PlacementOptions;
  /** How long a model may go without a live worker before its waiting runs fail; 0: they wait for one forever. */
  unservedWaitMs: number;
}

export class Sweeper {
  private timer?: NodeJS.Timeout;
  private running = false;
  private stopped = false;
  /** When this replica last saw a live worker of each model; a model it never saw counts from its own start. */
  private readonly servedAt = new Map<string, number>();
  private readonly startedAt = Date.now();

  constructor(
    private readonly store: PostgresStore,
    private readonly lifecycle: RunLifecycle,
    private readonly monitor: RegionMonitor,
    private readonly placement: Placement,
    private readonly metrics: ClusterMetrics,
    private readonly logger: Logger,
    private readonly opts: SweeperOptions,
  ) {}

  start(): void {
    this.stopped = false;
    const tick = () => {
      if (this.stopped) return;
      this.sweep()
        .catch((err) => this.logger.error({ err }, 'cluster sweep failed'))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.opts.intervalMs);
        });
    };
    tick();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  async sweep(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const admittedBefore = this.placement.admitted;
      const all = await this.monitor.refresh();
      this.placement.refreshed(await this.store.countUnfinished(), admittedBefore);
      // Each model on its own: its runs move only between regions whose workers serve it, into its queue.
      for (const model of KLEIN_MODELS.map((m) => m.id)) {
        const states = statesFor(all, model);
        const extra = new Map<string, number>();
        const target = () => chooseRegion(states, extra, this.opts.placement);
        for (const s of states) {
          if (!s.healthy) await this.move(s.name, target(), model);
        }
        await this.move(null, chooseRegion(states, extra, this.opts.placement, true), model);
        for (const s of states) {
          if (s.reachable) await this.repair(s.name, model);
        }
        await this.giveUp(model, states);
      }
    } finally {
      this.running = false;
    }
  }

  private async move(from: string | null, to: string | null, model: string): Promise<void> {
    if (!to || from === to) return;
    const ids = await this.store.moveRuns(from, to, this.opts.batch, runModelIds(model));
    if (!ids.length) return;
    this.metrics.moved.inc({ from: from ?? 'unplaced', to }, ids.length);
    this.logger.warn({ from, to, model, runs: ids.length }, from ? 'moved runs out of an unhealthy region' : 'placed parked runs');
    await this.enqueueAll(to, ids, model);
  }

  private async repair(region: string, model: string): Promise<void> {
    const ids = await this.store.staleRuns(region, Date.now() - this.opts.staleMs, this.opts.batch, runModelIds(model));
    if (ids.length) await this.enqueueAll(region, ids, model);
  }

  /**
   * A model nobody serves may be between workers (a restart, a scale-up loading weights), so its runs wait, but not
   * forever: once no reachable region has had a live worker for it during `unservedWaitMs`, its runs that have
   * waited as long fail. Each fails only from the status it was read in, so a worker claiming it meanwhile wins and
   * replicas sweeping at once end it once (one callback).
   */
  private async giveUp(model: string, states: RegionState[]): Promise<void> {
    const wait = this.opts.unservedWaitMs;
    const now = Date.now();
    if (states.some(hasLiveWorkers)) {
      this.servedAt.set(model, now);
      return;
    }
    if (!wait || now - (this.servedAt.get(model) ?? this.startedAt) < wait) return;
    const runs = await this.store.waitingRuns(runModelIds(model), now - wait, this.opts.batch);
    let failed = 0;
    for (const run of runs) {
      const message = `no live worker has served ${model} in any region for ${Math.round(wait / 1000)} s; the run waited ` +
        `${Math.round((now - run.created_at) / 1000)} s and was given up (start a worker with --model for it, then submit again)`;
      if (await this.lifecycle.fail(run, 'MODEL_UNAVAILABLE', message, 'dispatch', [run.status])) failed++;
    }
    if (failed) this.logger.warn({ model, failed, wait_ms: wait }, 'failed runs of a model no worker has served for too long');
  }

  private async enqueueAll(region: string, ids: string[], model: string): Promise<void> {
    const queue = this.monitor.region(region)?.queues.get(model);
    if (!queue) return;
    for (const id of ids) {
      try {
        await withTimeout(enqueueRun(queue, id), 2000, 'enqueue');
      } catch (err) {
        this.metrics.enqueueErrors.inc({ region });
        this.logger.warn({ err, region, run_id: id }, 'enqueue failed; the next sweep retries');
        return;
      }
    }
  }
}
