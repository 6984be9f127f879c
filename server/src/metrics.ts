// Prometheus metrics: runs by status, queue depth, stage latencies, engine health, HTTP latencies, request
// body bytes held. The registry lives below HTTP (dispatch observes stages); http/metrics.ts serves it with
// the engine's own.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EngineStatusView } from './engine/engine.ts';
import type { RunEventBus } from './runs/events.ts';
import type { RunStore } from './runs/store.ts';
import { isTerminal, RUN_STATUSES } from './runs/types.ts';

const STATES = ['starting', 'loading', 'ready', 'restarting', 'unavailable', 'stopped'];

export class Metrics {
  readonly registry = new Registry();
  readonly runsCompleted = new Counter({
    name: 'kleinserve_runs_completed_total',
    help: 'Runs that reached a terminal state, by status',
    labelNames: ['status'],
    registers: [this.registry],
  });
  readonly stage = new Histogram({
    name: 'kleinserve_stage_seconds',
    help: 'Latency of each run stage (queue, preprocess, engine)',
    labelNames: ['stage'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly http = new Histogram({
    name: 'kleinserve_http_request_seconds',
    help: 'HTTP request latency by route template (never the raw path), method and status code',
    labelNames: ['method', 'route', 'code'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 60],
    registers: [this.registry],
  });
  readonly bodyBytesHeld = new Gauge({
    name: 'kleinserve_http_body_bytes_held',
    help: 'Bytes of request bodies admitted and not yet answered (declared lengths; the body limit for chunked ones), all callers together',
    registers: [this.registry],
  });
  readonly bodyRefusals = new Counter({
    name: 'kleinserve_http_body_refusals_total',
    help: 'Requests refused before their body was read because the body budget was spent, by bound (key: 429, in_flight: 503)',
    labelNames: ['bound'],
    registers: [this.registry],
  });

  constructor(store: RunStore, engine: EngineStatusView, bus: RunEventBus) {
    collectDefaultMetrics({ register: this.registry, prefix: 'kleinserve_' });
    new Gauge({
      name: 'kleinserve_runs',
      help: 'Runs currently in each status (queued = queue depth)',
      labelNames: ['status'],
      registers: [this.registry],
      async collect() {
        const counts = await store.countByStatus();
        for (const s of RUN_STATUSES) this.set({ status: s }, counts[s]);
      },
    });
    new Gauge({
      name: 'kleinserve_engine_state',
      help: 'Engine supervisor state (1 for the current state)',
      labelNames: ['state'],
      registers: [this.registry],
      collect() {
        for (const s of STATES) this.set({ state: s }, engine.state === s ? 1 : 0);
      },
    });
    // The supervisor counts restarts itself; the counter catches up with it on each scrape.
    let restartsCounted = 0;
    new Counter({
      name: 'kleinserve_engine_restarts_total',
      help: 'Times the engine child was restarted',
      registers: [this.registry],
      collect() {
        const restarts = engine.status().restarts;
        if (restarts > restartsCounted) this.inc(restarts - restartsCounted);
        restartsCounted = Math.max(restartsCounted, restarts);
      },
    });
    bus.subscribe('*', (ev) => {
      if (ev.type === 'status' && isTerminal(ev.run.status)) this.runsCompleted.inc({ status: ev.run.status });
    });
  }
}
