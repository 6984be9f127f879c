// The engine as the rest of the control plane sees it, apart from its implementations (the supervised local
// child in supervisor.ts; the api role's view of its regions in cluster/engine-view.ts).
import type { EventEmitter } from 'node:events';
import type { GenerateParams, GenerateResult, RequestOptions } from './client.ts';
import type { EngineLimits, ModelFacts, SafetyFacts } from './limits.ts';

export type EngineState = 'starting' | 'loading' | 'ready' | 'restarting' | 'unavailable' | 'stopped';

export interface EngineStatus {
  status: EngineState;
  ok: boolean;
  pid: number | null;
  restarts: number;
  model: string;
  device?: string;
  dtype?: string;
  queue_depth?: number;
  in_flight?: number;
  limits: EngineLimits;
  error: string | null;
  /** The loaded checkpoint's facts (null while loading, absent where the engine is elsewhere). */
  model_info?: ModelFacts | null;
  safety?: SafetyFacts;
  /** Each served model's engine, by public id, where this view covers several (or names its one). */
  models?: Record<string, EngineStatus>;
}

/** Readiness, limits and metrics: all a role that does not run the model itself needs to know. Emits 'state'. */
export interface EngineStatusView extends EventEmitter {
  readonly state: EngineState;
  readonly limits: EngineLimits;
  status(): EngineStatus;
  metricsText(): Promise<string>;
  /**
   * The view of one served model's engine (a registry id: models/registry.ts), null when this process or
   * cluster cannot serve it. Absent: one engine serves every run.
   */
  forModel?(model: string): EngineStatusView | null;
}

/** An engine that runs the model: what the dispatcher drives. */
export interface Engine extends EngineStatusView {
  generate(params: GenerateParams, opts?: RequestOptions): Promise<GenerateResult>;
  waitReady(signal?: AbortSignal): Promise<void>;
}

/** The model cannot be loaded (the engine exited with its "never restart" status). */
export class ModelUnavailableError extends Error {}
