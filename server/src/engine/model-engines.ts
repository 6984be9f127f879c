// The engines of a process that serves several models (`serve --model a --model b`): one supervised engine per
// model, each with its own socket and restart policy. Seen from above it is one EngineStatusView whose health,
// readiness and metrics cover every model; `forModel` is the one engine a model's runs go to.
import { EventEmitter } from 'node:events';
import type { Engine, EngineState, EngineStatus, EngineStatusView } from './engine.ts';
import type { EngineLimits } from './limits.ts';

type Startable = Engine & { start(): void; stop(): Promise<void> };

/** Worst first: the whole is only as ready as its least ready engine (an unavailable one excepted, below). */
const ORDER: EngineState[] = ['stopped', 'starting', 'restarting', 'loading', 'ready'];

export class ModelEngines extends EventEmitter implements EngineStatusView {
  readonly engines: ReadonlyMap<string, Startable>;

  /** `engines`: public model id -> its engine, in the operator's order. */
  constructor(engines: Map<string, Startable>) {
    super();
    this.setMaxListeners(0);
    this.engines = engines;
    for (const e of engines.values()) e.on('state', () => this.emit('state', this.state));
  }

  get models(): string[] {
    return [...this.engines.keys()];
  }

  forModel(model: string): Startable | null {
    return this.engines.get(model) ?? null;
  }

  /**
   * Ready once every loadable model is; unavailable only when none can load (a model that cannot load refuses
   * its own runs with 503 and is named in health, while the others serve).
   */
  get state(): EngineState {
    const states = [...this.engines.values()].map((e) => e.state);
    const live = states.filter((s) => s !== 'unavailable');
    if (!live.length) return 'unavailable';
    return live.reduce((worst, s) => (ORDER.indexOf(s) < ORDER.indexOf(worst) ? s : worst));
  }

  /** The first model's: limits are the engine's own defaults, the same for every checkpoint of the family. */
  get limits(): EngineLimits {
    return this.first.limits;
  }

  status(): EngineStatus & { models: Record<string, EngineStatus> } {
    const models = Object.fromEntries([...this.engines].map(([id, e]) => [id, e.status()]));
    if (this.engines.size === 1) return { ...this.first.status(), models };
    const all = Object.values(models);
    const state = this.state;
    return {
      status: state,
      ok: state === 'ready',
      pid: null,
      restarts: all.reduce((n, s) => n + s.restarts, 0),
      model: this.models.join(','),
      queue_depth: all.reduce((n, s) => n + (s.queue_depth ?? 0), 0),
      in_flight: all.reduce((n, s) => n + (s.in_flight ?? 0), 0),
      limits: this.limits,
      error: all.find((s) => s.error)?.error ?? null,
      models,
    };
  }

  /** Each engine's exposition with a `model` label on every sample, each metric family once. */
  async metricsText(): Promise<string> {
    const texts = await Promise.all([...this.engines].map(async ([id, e]) => [id, await e.metricsText()] as const));
    const engines = this.engines.size === 1 ? texts[0][1] : mergeExpositions(texts);
    return engines + this.stateText();
  }

  /** Which state each model's engine is in (the server's kleinserve_engine_state is the whole's). */
  private stateText(): string {
    const lines = ['# HELP kleinserve_model_engine_state Engine state of each served model (1 for its current state)', '# TYPE kleinserve_model_engine_state gauge'];
    for (const [id, e] of this.engines) {
      for (const s of [...ORDER, 'unavailable']) lines.push(`kleinserve_model_engine_state{model="${id}",state="${s}"} ${e.state === s ? 1 : 0}`);
    }
    return lines.join('\n') + '\n';
  }

  start(): void {
    for (const e of this.engines.values()) e.start();
  }

  async stop(): Promise<void> {
    await Promise.all([...this.engines.values()].map((e) => e.stop()));
  }

  private get first(): Startable {
    return this.engines.values().next().value!;
  }
}

/**
 * Prometheus text from several engines as one exposition: HELP/TYPE once per family, every sample labelled
 * with its model. A sample belongs to the family whose HELP/TYPE came last (histogram _bucket/_sum/_count too).
 */
export function mergeExpositions(texts: (readonly [model: string, text: string])[]): string {
  const families = new Map<string, { meta: string[]; samples: string[] }>();
  for (const [model, text] of texts) {
    let current: { meta: string[]; samples: string[] } | null = null;
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      const meta = /^# (HELP|TYPE) (\S+)/.exec(line);
      if (meta) {
        const name = meta[2];
        let fam = families.get(name);
        if (!fam) families.set(name, (fam = { meta: [], samples: [] }));
        if (!fam.meta.some((m) => m.startsWith(`# ${meta[1]} `))) fam.meta.push(line);
        current = fam;
        continue;
      }
      if (line.startsWith('#') || !current) continue;
      current.samples.push(withLabel(line, 'model', model));
    }
  }
  return [...families.values()].map((f) => [...f.meta, ...f.samples].join('\n')).join('\n') + '\n';
}

function withLabel(sample: string, name: string, value: string): string {
  const label = `${name}="${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
  const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?(\s.*)$/.exec(sample);
  if (!m) return sample;
  const [, metric, , labels, rest] = m;
  return `${metric}{${labels ? `${label},${labels}` : label}}${rest}`;
}
