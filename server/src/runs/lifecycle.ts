// The one run state machine: queued -> dispatching -> running -> succeeded | failed | canceled.
// Every change is a conditional store transition, so racing actors (cancel vs finish, a retry vs a late
// result) resolve in the store and a run completes at most once. Each change is published on the bus.
import type { Logger } from 'pino';
import type { RunEventBus } from './events.ts';
import type { NewDelivery, RunStore } from './store.ts';
import { StorageWriteError } from '../storage/write-failure.ts';
import { UnrecordedTransitions } from './unrecorded-transitions.ts';
import { isTerminal, type RunPatch, type RunRecord, type RunStatus, type StoredOutput } from './types.ts';

export type FailureStage = 'validation' | 'preprocess' | 'dispatch' | 'inference' | 'postprocess';

export interface LifecycleOptions {
  maxAttempts: number;
  logger: Logger;
  /** Builds the callback envelope for a terminal run (needs public URLs, hence injected). */
  callbackBody?: (run: RunRecord) => { event: string; body: string };
}

const ACTIVE: RunStatus[] = ['dispatching', 'running'];
const NOT_TERMINAL: RunStatus[] = ['queued', 'dispatching', 'running'];

export class RunLifecycle {
  /** Ends, requeues and cancels the store refused, retried until they are recorded. */
  readonly unrecorded: UnrecordedTransitions;

  constructor(
    readonly store: RunStore,
    readonly bus: RunEventBus,
    private readonly opts: LifecycleOptions,
  ) {
    this.unrecorded = new UnrecordedTransitions(store, (run) => this.publish(run), opts.logger);
  }

  async create(run: RunRecord): Promise<RunRecord> {
    await this.store.insert(run);
    this.publish(run);
    return run;
  }

  async claimNext(modelIds?: string[]): Promise<RunRecord | null> {
    return this.publish(await this.store.claimNext(modelIds));
  }

  async markRunning(run: RunRecord): Promise<RunRecord | null> {
    const patch = { status: 'running' as const, started_at: Date.now() };
    return this.publish(await this.store.transition(run.id, ['dispatching'], patch, this.deliveryFor({ ...run, ...patch })));
  }

  async succeed(run: RunRecord, output: StoredOutput): Promise<RunRecord | null> {
    return this.finish(run, ACTIVE, { status: 'succeeded', output });
  }

  /** `from`: only while the run is still in one of these (default: any status but a terminal one). */
  async fail(run: RunRecord, code: string, message: string, stage: FailureStage, from: RunStatus[] = NOT_TERMINAL): Promise<RunRecord | null> {
    this.opts.logger.warn({ run_id: run.id, failure_code: code, stage }, message);
    return this.finish(run, from, {
      status: 'failed',
      failure_code: code,
      failure_message: message,
      failure_stage_code: stage,
    });
  }

  /** Returns the canceled run, or null when the run was already terminal (or unknown). */
  async cancel(run: RunRecord): Promise<RunRecord | null> {
    return this.finish(run, NOT_TERMINAL, { status: 'canceled' });
  }

  /**
   * Puts an in-flight run back in the queue after its engine died or hung (or this process restarted),
   * or fails it once it has used up its attempts.
   */
  async retry(run: RunRecord, code: string, reason: string): Promise<RunRecord | null> {
    const attempts = run.attempts + 1;
    if (attempts >= this.opts.maxAttempts) {
      return this.fail({ ...run, attempts }, code, `${reason}; gave up after ${attempts} attempts`, 'inference');
    }
    this.opts.logger.warn({ run_id: run.id, attempts, reason }, 'requeueing run');
    return this.record(run.id, ACTIVE, { status: 'queued', attempts, started_at: null });
  }

  /** Graceful shutdown: an in-flight run goes back to the queue without using up an attempt. */
  async release(run: RunRecord): Promise<RunRecord | null> {
    return this.record(run.id, ACTIVE, { status: 'queued', started_at: null });
  }

  /** After a restart: runs that were in flight when the previous process died go back to the queue. */
  async recover(): Promise<number> {
    const stranded = await this.store.listInFlight();
    for (const run of stranded) {
      // A start on a full disk still serves: a requeue the store refuses is held and recorded later.
      await this.retry(run, 'ENGINE_CRASHED', 'control plane restarted while the run was in flight').catch((err) => {
        if (!(err instanceof StorageWriteError)) throw err;
      });
    }
    return stranded.length;
  }

  /**
   * After a restart: queued runs (recovered ones included) of a model no dispatcher of this process takes, because it
   * restarted without that model, can never start here; they fail MODEL_UNAVAILABLE with `message(run)`, callbacks
   * and all. Only a run still queued fails, so a run ends once however often this is called.
   */
  async failUnserved(served: string[], message: (run: RunRecord) => string): Promise<number> {
    const stranded = await this.store.listQueuedExcept(served);
    let failed = 0;
    for (const run of stranded) {
      // As in recover(): a failure the store refuses is held and recorded once storage takes writes again.
      const ended = await this.fail(run, 'MODEL_UNAVAILABLE', message(run), 'dispatch', ['queued']).catch((err) => {
        if (!(err instanceof StorageWriteError)) throw err;
        return null;
      });
      if (ended) failed++;
    }
    return failed;
  }

  private async finish(run: RunRecord, from: RunStatus[], patch: RunPatch & { status: RunStatus }): Promise<RunRecord | null> {
    const full: RunPatch & { status: RunStatus } = { ...patch, completed_at: Date.now() };
    if (patch.attempts === undefined && 'attempts' in run) full.attempts = run.attempts;
    return this.record(run.id, from, full, this.deliveryFor({ ...run, ...full } as RunRecord));
  }

  /** The callback the run's entry into its new status sends, if any: by default only terminal statuses send one. */
  private deliveryFor(next: RunRecord): NewDelivery | undefined {
    if (!next.callback_url || !this.opts.callbackBody) return undefined;
    const on = next.callback?.on;
    if (on ? !on.includes(next.status) : !isTerminal(next.status)) return undefined;
    const { event, body } = this.opts.callbackBody(next);
    const signing = next.callback?.signing ? JSON.stringify(next.callback.signing) : null;
    return { run_id: next.id, url: next.callback_url, event, body, signing };
  }

  /** A transition that, if storage refuses it, is held and retried until recorded (and still throws now). */
  private async record(id: string, from: RunStatus[], patch: RunPatch & { status: RunStatus }, delivery?: NewDelivery): Promise<RunRecord | null> {
    try {
      return this.publish(await this.store.transition(id, from, patch, delivery));
    } catch (err) {
      if (err instanceof StorageWriteError) this.unrecorded.hold(id, from, patch, delivery);
      throw err;
    }
  }

  private publish(run: RunRecord | null): RunRecord | null {
    if (run) this.bus.publish({ type: 'status', run });
    return run;
  }
}
