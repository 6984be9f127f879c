// In-process bus the lifecycle publishes on. Prefer: wait listens on it now; the SSE route will later.
import { EventEmitter } from 'node:events';
import type { RunRecord } from './types.ts';

export type RunEvent =
  | { type: 'status'; run: RunRecord }
  | { type: 'progress'; run_id: string; step: number; steps: number; step_ms?: number; elapsed_ms?: number };

export class RunEventBus {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  publish(ev: RunEvent): void {
    const runId = ev.type === 'status' ? ev.run.id : ev.run_id;
    this.emitter.emit(runId, ev);
    this.emitter.emit('*', ev);
  }

  /** Listen to one run's events (or '*' for all); returns the unsubscribe function. */
  subscribe(runId: string, fn: (ev: RunEvent) => void): () => void {
    this.emitter.on(runId, fn);
    return () => this.emitter.off(runId, fn);
  }
}
