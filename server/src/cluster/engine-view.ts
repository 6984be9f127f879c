// The api role has no engine of its own; the routes still ask one for readiness, limits and metrics. This
// view answers from the regions: ready while some region is healthy, limits as the workers report them.
import { EventEmitter } from 'node:events';
import type { GenerateResult } from '../engine/client.ts';
import type { Engine, EngineState, EngineStatus } from '../engine/supervisor.ts';
import type { ClusterMetrics } from './metrics.ts';
import type { RegionMonitor } from './region-monitor.ts';

export class ClusterEngineView extends EventEmitter implements Engine {
  constructor(
    private readonly monitor: RegionMonitor,
    private readonly metrics: ClusterMetrics,
  ) {
    super();
    this.setMaxListeners(0);
  }

  get state(): EngineState {
    return [...this.monitor.states.values()].some((s) => s.reachable && s.workers > 0) ? 'ready' : 'starting';
  }

  get limits() {
    return this.monitor.limits();
  }

  async generate(): Promise<GenerateResult> {
    throw new Error('the api role has no engine; workers run the model');
  }

  async waitReady(): Promise<void> {}

  status(): EngineStatus {
    const regions = [...this.monitor.states.values()];
    return {
      status: this.state,
      ok: this.state === 'ready',
      pid: null,
      restarts: 0,
      model: 'cluster',
      queue_depth: regions.reduce((n, s) => n + s.waiting, 0),
      in_flight: regions.reduce((n, s) => n + s.active, 0),
      limits: this.limits,
      error: null,
      regions,
    } as EngineStatus;
  }

  metricsText(): Promise<string> {
    return this.metrics.registry.metrics();
  }
}
