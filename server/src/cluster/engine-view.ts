// The api role has no engine of its own; health, intake limits and metrics still ask about one. This view
// answers from the regions: ready while some region has live workers, limits as the workers report them.
import { EventEmitter } from 'node:events';
import type { EngineState, EngineStatus, EngineStatusView } from '../engine/engine.ts';
import type { ClusterMetrics } from './metrics.ts';
import type { RegionMonitor } from './region-monitor.ts';

export class ClusterEngineView extends EventEmitter implements EngineStatusView {
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

  status(): EngineStatus & { regions: unknown[] } {
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
    };
  }

  metricsText(): Promise<string> {
    return this.metrics.registry.metrics();
  }
}
