// The run service: everything a surface does with runs, below HTTP. One flow for every surface:
//   submit (idempotency, quotas, intake, admission)  ->  await (hold until terminal, or follow events)
//   ->  present (the surface renders the run; outputBytes() for answers that carry the images themselves).
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { EngineStatusView } from '../engine/engine.ts';
import { runNotFound, ServiceError } from '../errors.ts';
import { claimIdempotency, type IdempotencyOptions } from '../idempotency/claim.ts';
import type { RateLimiter } from '../quotas/rate-limiter.ts';
import type { RetentionSweeper } from '../retention/sweeper.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import type { Admission } from './admission.ts';
import type { AssetLibrary } from './assets.ts';
import type { InputReferences } from './references.ts';
import { runCost } from './cost.ts';
import { modelOfRun } from '../models/registry.ts';
import type { RunEvent } from './events.ts';
import type { RunRequest } from './inputs.ts';
import { assertModelAvailable, intakeRun, type IntakeDeps } from './intake.ts';
import type { RunLifecycle } from './lifecycle.ts';
import type { ListQuery } from './store.ts';
import { isTerminal, type RunRecord } from './types.ts';
import { waitForTerminal } from './wait.ts';

export interface RunServiceDeps {
  lifecycle: RunLifecycle;
  intake: IntakeDeps;
  admission: Admission;
  idempotency: IdempotencyOptions;
  quotas: RateLimiter;
  retention: RetentionSweeper;
  engine: EngineStatusView;
  objects: ObjectStore;
  logger: Logger;
  /** Cap on how long a request may be held for its run, in seconds. */
  waitCapSeconds: number;
  /** The operator's price of one GPU-hour; a run's cost is its GPU time at this price. */
  pricePerGpuHour: number;
  assets: AssetLibrary;
  references: InputReferences;
}

/** Who asks: the hash of their API key (never the key), the scope of idempotency keys and quotas. */
export interface Caller {
  scope: string;
  /** The request's logger (it carries the request id), so service log lines join the request's. */
  log?: Logger;
}

export interface Submitted {
  run: RunRecord;
  /** True when an earlier request with the same idempotency key made this run. */
  replayed: boolean;
}

/** A hash of what a request asks for, independent of key order, so a repeat can be told from a new request. */
export function fingerprint(request: RunRequest): string {
  const canonical = (v: unknown): unknown =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])]))
      : Array.isArray(v) ? v.map(canonical) : v;
  return createHash('sha256').update(JSON.stringify(canonical(request))).digest('hex');
}

/**
 * The engine a run's model is served by. A model of the family that this server does not serve is a 404
 * naming it and what is served; where one engine serves everything (a cluster's api, tests) that engine.
 */
export function engineForRun(view: EngineStatusView, runModelId: string): EngineStatusView {
  if (!view.forModel) return view;
  const model = modelOfRun(runModelId);
  const engine = view.forModel(model);
  if (engine) return engine;
  const served = view.status().models;
  const list = served && typeof served === 'object' ? Object.keys(served).join(', ') : '';
  throw new ServiceError('not_found', 'MODEL_NOT_SERVED', `${model} is not served by this server${list ? ` (it serves ${list})` : ''}`);
}

export class RunService {
  readonly waitCapSeconds: number;
  /** Uploaded assets, referenced by runs. */
  readonly assets: AssetLibrary;
  private readonly unsubscribe: () => void;

  constructor(private readonly deps: RunServiceDeps) {
    this.waitCapSeconds = deps.waitCapSeconds;
    this.assets = deps.assets;
    // A run's quota slot is held until the run ends, wherever it ends.
    this.unsubscribe = deps.lifecycle.bus.subscribe('*', (ev) => {
      if (ev.type === 'status' && isTerminal(ev.run.status)) void deps.quotas.finished(ev.run.id).catch(() => {});
    });
  }

  close(): void {
    this.unsubscribe();
  }

  /**
   * Creates a run, or returns the run an earlier request with the same idempotency key created. Refuses
   * with a ServiceError: invalid input (naming each field), quota reached, model unavailable, cluster full.
   */
  async submit(caller: Caller, request: RunRequest, opts: { idempotencyKey: string | null }): Promise<Submitted> {
    const { deps } = this;
    const engine = engineForRun(deps.engine, request.model_id);
    assertModelAvailable(engine.state, engine.status().error);
    const claim = await claimIdempotency(deps.idempotency, caller.scope, opts.idempotencyKey, opts.idempotencyKey ? fingerprint(request) : undefined);
    if (claim.kind === 'existing') {
      const first = await deps.lifecycle.store.get(claim.runId);
      if (!first) throw runNotFound(claim.runId);
      return { run: first, replayed: true };
    }
    let slot: string | null = null;
    try {
      slot = await this.takeQuota(caller);
      const { run, decoded } = await intakeRun(deps.intake, request, caller.scope);
      if (claim.kind === 'new') await claim.bind(run.id);
      const created = await deps.admission.admit(run, decoded, (r) => deps.lifecycle.create(r));
      await deps.quotas.bind(caller.scope, slot, created.id);
      slot = null;
      (caller.log ?? deps.logger).info({ run_id: created.id }, 'run created');
      return { run: created, replayed: false };
    } catch (err) {
      if (claim.kind === 'new') await claim.release();
      if (slot) await deps.quotas.release(caller.scope, slot);
      throw err;
    }
  }

  /** Holds until the run is terminal, `seconds` pass, or `signal` fires (the client left); returns the latest run. */
  await(run: RunRecord, seconds: number, signal?: AbortSignal): Promise<RunRecord> {
    return waitForTerminal(this.deps.lifecycle.store, this.deps.lifecycle.bus, run, Math.min(seconds, this.waitCapSeconds), signal);
  }

  /** As await, for surfaces whose protocol holds the request until the end (OpenAI images): not capped by the wait cap. */
  awaitEnd(run: RunRecord, seconds: number, signal?: AbortSignal): Promise<RunRecord> {
    return waitForTerminal(this.deps.lifecycle.store, this.deps.lifecycle.bus, run, seconds, signal);
  }

  /**
   * Follows one run: once `attach` is called, its listener gets every status change and engine progress step
   * that happened after the returned run was read (nothing in between is lost). `stop` ends the following.
   */
  async follow(id: string): Promise<{ run: RunRecord; attach: (fn: (ev: RunEvent) => void) => void; stop: () => void }> {
    const pending: RunEvent[] = [];
    let sink: ((ev: RunEvent) => void) | null = null;
    const stop = this.deps.lifecycle.bus.subscribe(id, (ev) => (sink ? sink(ev) : pending.push(ev)));
    let run: RunRecord | null;
    try {
      run = await this.deps.lifecycle.store.get(id);
    } catch (err) {
      stop();
      throw err;
    }
    if (!run) {
      stop();
      throw runNotFound(id);
    }
    const attach = (fn: (ev: RunEvent) => void) => {
      sink = fn;
      for (const ev of pending.splice(0)) fn(ev);
    };
    return { run, attach, stop };
  }

  async get(id: string): Promise<RunRecord> {
    const run = await this.deps.lifecycle.store.get(id);
    if (!run) throw runNotFound(id);
    return run;
  }

  /** Newest first; `cursor` is the id of the last run of the previous page. */
  list(q: ListQuery): Promise<RunRecord[]> {
    return this.deps.lifecycle.store.list(q);
  }

  /** Cancels a live run; `canceled` is false when it was already terminal (the run is then returned as it is). */
  async cancel(id: string): Promise<{ run: RunRecord; canceled: boolean }> {
    const run = await this.get(id);
    if (!isTerminal(run.status)) {
      const canceled = await this.deps.lifecycle.cancel(run);
      if (canceled) return { run: canceled, canceled: true };
    }
    return { run: (await this.deps.lifecycle.store.get(id)) ?? run, canceled: false };
  }

  /** The caller's right to erasure: cancel if live, then erase inputs, outputs and record. */
  async delete(id: string): Promise<void> {
    const run = await this.get(id);
    if (!isTerminal(run.status)) await this.deps.lifecycle.cancel(run);
    const latest = await this.get(id);
    await this.deps.retention.delete(latest);
    this.deps.logger.info({ run_id: id }, 'run deleted on request');
  }

  /** What the run cost: its GPU time at the configured price per GPU-hour. */
  cost(run: RunRecord): number {
    return runCost(run, this.deps.pricePerGpuHour);
  }

  /** A run's stored input by the parts of its unguessable URL (runs/references.ts inputUrl). */
  storedInput(runId: string, token: string, index: number) {
    return this.deps.references.storedInput(runId, token, index);
  }

  /** The encoded bytes of each output of a finished run, in order. */
  outputBytes(run: RunRecord): Promise<Buffer[]> {
    return Promise.all((run.output?.images ?? []).map((img) => this.deps.objects.get(img.key)));
  }

  private async takeQuota(caller: Caller): Promise<string> {
    const a = await this.deps.quotas.admit(caller.scope);
    if (a.ok) return a.slotId;
    const what = a.reason === 'rate' ? `${a.limit} runs per minute` : `${a.limit} runs in progress`;
    throw new ServiceError('rate_limited', 'RATE_LIMITED', `rate limit reached: at most ${what} per API key; retry after ${a.retryAfterS} s`, [], a.retryAfterS);
  }
}
