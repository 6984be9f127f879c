// The api role has no engine of its own; health, intake limits and metrics still ask about one. This view
// answers from the regions: ready while some region has live workers, limits as the workers report them; per
// model, from the workers that serve it.
import { EventEmitter } from 'node:events';
import type { EngineState, EngineStatus, EngineStatusView } from '../engine/engine.ts';
import type { ClusterMetrics } from './metrics.ts';
import { hasLiveWorkers, type RegionMonitor } from './region-monitor.ts';
import { KLEIN_MODELS } from '../models/registry.ts';

export class ClusterEngineView extends EventEmitter implements EngineStatusView {
  constructor(
    private readonly monitor: RegionMonitor,
    private readonly metrics: ClusterMetrics,
  ) {
    super();
    this.setMaxListeners(0);
  }

  get state(): EngineState {
    return [...this.monitor.states.values()].some(hasLiveWorkers) ? 'ready' : 'starting';
  }

  get limits() {
    return this.monitor.limits();
  }

  /**
   * One model as the cluster serves it: ready while some reachable region has live workers for it, with their
   * limits and checkpoint facts. Never null: a run for a model nobody serves yet is parked or refused by
   * placement, as the backpressure setting says.
   */
  forModel(model: string): EngineStatusView {
    return new ClusterModelView(this.monitor, model, () => this.metricsText());
  }

  status(): EngineStatus & { regions: unknown[] } {
    const regions = [...this.monitor.states.values()];
    const models = Object.fromEntries(KLEIN_MODELS.map((m) => [m.id, modelStatus(this.monitor, m.id, this.forModel(m.id).state)]));
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
      models,
      regions,
    };
  }

  metricsText(): Promise<string> {
    return this.metrics.registry.metrics();
  }
}

/** One model across the regions: its workers, slots, queue and facts. */
function modelStatus(monitor: RegionMonitor, model: string, state: EngineState): EngineStatus & { workers: number; slots: number } {
  const loads = [...monitor.states.values()].flatMap((s) => (s.reachable && s.models?.[model] ? [s.models[model]] : []));
  return {
    status: state,
    ok: state === 'ready',
    pid: null,
    restarts: 0,
    model,
    workers: loads.reduce((n, m) => n + m.workers, 0),
    slots: loads.reduce((n, m) => n + m.slots, 0),
    queue_depth: loads.reduce((n, m) => n + m.waiting, 0),
    in_flight: loads.reduce((n, m) => n + m.active, 0),
    limits: monitor.limits(model),
    error: null,
    model_info: monitor.modelInfo(model),
  };
}

class ClusterModelView extends EventEmitter implements EngineStatusView {
  constructor(
    private readonly monitor: RegionMonitor,
    private readonly model: string,
    readonly metricsText: () => Promise<string>,
  ) {
    super();
  }

  get state(): EngineState {
    return [...this.monitor.states.values()].some((s) => s.reachable && (s.models?.[this.model]?.workers ?? 0) > 0) ? 'ready' : 'starting';
  }

  get limits() {
    return this.monitor.limits(this.model);
  }

  status(): EngineStatus {
    return modelStatus(this.monitor, this.model, this.state);
  }
}
