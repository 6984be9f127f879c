// Per-region cluster metrics for the api's /metrics (appended through the engine seam, see engine-view.ts).
import { Counter, Gauge, Registry } from 'prom-client';
import type { RegionMonitor } from './region-monitor.ts';

export class ClusterMetrics {
  readonly registry = new Registry();
  readonly moved = new Counter({
    name: 'kleinserve_region_runs_moved_total',
    help: 'Runs moved from one region to another (from = unplaced for runs parked by backpressure)',
    labelNames: ['from', 'to'],
    registers: [this.registry],
  });
  readonly failovers = new Counter({
    name: 'kleinserve_region_failovers_total',
    help: 'Times a region went from healthy to unhealthy',
    labelNames: ['region'],
    registers: [this.registry],
  });
  readonly enqueueErrors = new Counter({
    name: 'kleinserve_region_enqueue_errors_total',
    help: 'Enqueues that failed (the sweeper retries them)',
    labelNames: ['region'],
    registers: [this.registry],
  });

  constructor(monitor: RegionMonitor) {
    const gauge = (name: string, help: string, pick: (s: ReturnType<RegionMonitor['states']['get']> & object) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['region'],
        registers: [this.registry],
        collect() {
          for (const s of monitor.states.values()) this.set({ region: s.name }, pick(s));
        },
      });
    gauge('kleinserve_region_queue_depth', 'Jobs waiting in the region queue', (s) => s.waiting);
    gauge('kleinserve_region_active_jobs', 'Jobs held by the region workers', (s) => s.active);
    gauge('kleinserve_region_live_workers', 'Workers with a live heartbeat', (s) => s.workers);
    gauge('kleinserve_region_healthy', '1 when the region takes new runs', (s) => (s.healthy ? 1 : 0));
    gauge('kleinserve_region_oldest_wait_seconds', 'Age of the oldest waiting job', (s) => s.oldestWaitMs / 1000);
    monitor.onChange((prev, next) => {
      if (prev?.healthy && !next.healthy) this.failovers.inc({ region: next.name });
    });
  }
}
