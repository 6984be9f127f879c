// The api's view of every region, refreshed on a timer: is its Redis reachable, how many workers heartbeat,
// how deep is its queue, how long has its oldest job waited. Health is derived from these three signals, for the
// region as a whole and per model (each model has its own queue and the workers that serve it).
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { DEFAULT_ENGINE_LIMITS, type EngineLimits, type ModelFacts } from '../engine/limits.ts';
import { KLEIN_MODELS } from '../models/registry.ts';
import { openQueue, type RunJobData } from '../dispatch/bullmq-queue.ts';
import { modelOf, readHeartbeats } from './heartbeat.ts';
import { producerConnection, withTimeout } from './redis.ts';
import type { RegionSpec } from './regions.ts';

export interface RegionState {
  name: string;
  home: boolean;
  reachable: boolean;
  healthy: boolean;
  /** Why the region is unhealthy, for logs and `kleinserve status`. */
  reason: string | null;
  workers: number;
  /** Sum of live workers' concurrency: runs the region can hold in its engines at once. */
  slots: number;
  waiting: number;
  active: number;
  oldestWaitMs: number;
  limits: EngineLimits | null;
  /** The same signals per model (public id), from that model's queue and the workers that serve it. */
  models?: Record<string, ModelLoad>;
  checkedAt: number;
}

/** One model's share of a region: its workers, its queue, whether it can take that model's runs. */
export interface ModelLoad {
  workers: number;
  slots: number;
  waiting: number;
  active: number;
  oldestWaitMs: number;
  healthy: boolean;
  reason: string | null;
  limits: EngineLimits | null;
  model_info: ModelFacts | null;
}

export interface Region {
  spec: RegionSpec;
  redis: Redis;
  /** One queue per family model; only workers serving a model consume its queue. */
  queues: ReadonlyMap<string, Queue<RunJobData>>;
}

/** A region that can run work now: reachable, with at least one live worker (healthy or only slow). */
export const hasLiveWorkers = (s: RegionState): boolean => s.reachable && s.workers > 0;

/** A region seen by one model's runs: its workers, slots, queue and health are that model's. */
export function forModel(s: RegionState, model: string): RegionState {
  const m = s.models?.[model];
  if (!m) return { ...s, healthy: false, reason: s.reason ?? `no live workers serve ${model}`, workers: 0, slots: 0, waiting: 0, active: 0, oldestWaitMs: 0, limits: null };
  return { ...s, healthy: s.reachable && m.healthy, reason: s.reachable ? m.reason : s.reason, workers: m.workers, slots: m.slots, waiting: m.waiting, active: m.active, oldestWaitMs: m.oldestWaitMs, limits: m.limits };
}

export interface MonitorOptions {
  /** A job waiting longer than this marks its region unhealthy (its workers are stuck or too few). */
  waitDeadlineMs: number;
  checkTimeoutMs: number;
}

export class RegionMonitor {
  readonly regions: Region[];
  readonly states = new Map<string, RegionState>();
  private readonly listeners: ((prev: RegionState | undefined, next: RegionState) => void)[] = [];

  constructor(
    specs: RegionSpec[],
    private readonly opts: MonitorOptions,
  ) {
    this.regions = specs.map((spec) => {
      const redis = producerConnection(spec.redisUrl);
      return { spec, redis, queues: new Map(KLEIN_MODELS.map((m) => [m.id, openQueue(redis, m.id)])) };
    });
    // Until the first check, every region counts as down: nothing is sent blind.
    for (const r of this.regions) this.states.set(r.spec.name, this.down(r, 'not checked yet'));
  }

  get home(): string {
    return this.regions[0].spec.name;
  }

  region(name: string): Region | undefined {
    return this.regions.find((r) => r.spec.name === name);
  }

  onChange(fn: (prev: RegionState | undefined, next: RegionState) => void): void {
    this.listeners.push(fn);
  }

  async refresh(): Promise<RegionState[]> {
    const states = await Promise.all(this.regions.map((r) => this.check(r)));
    for (const s of states) {
      const prev = this.states.get(s.name);
      this.states.set(s.name, s);
      for (const fn of this.listeners) fn(prev, s);
    }
    return states;
  }

  async close(): Promise<void> {
    await Promise.all(this.regions.flatMap((r) => [...r.queues.values()].map((q) => q.close().catch(() => {}))));
    for (const r of this.regions) r.redis.disconnect();
  }

  private async check(r: Region): Promise<RegionState> {
    try {
      return await withTimeout(this.probe(r), this.opts.checkTimeoutMs, `region ${r.spec.name} check`);
    } catch (err) {
      return this.down(r, `redis unreachable: ${(err as Error).message}`);
    }
  }

  private async probe(r: Region): Promise<RegionState> {
    await untilReady(r.redis, this.opts.checkTimeoutMs);
    await r.redis.ping();
    const [queues, beats] = await Promise.all([
      Promise.all(
        [...r.queues].map(async ([model, queue]) => {
          const [counts, oldest] = await Promise.all([queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized'), queue.getJobs(['wait'], 0, 0, true)]);
          return { model, counts, oldest: oldest[0] };
        }),
      ),
      readHeartbeats(r.redis).then((all) => all.filter((b) => b.engine !== 'unavailable')),
    ]);
    const now = Date.now();
    const models: Record<string, ModelLoad> = {};
    for (const { model, counts, oldest } of queues) {
      const mine = beats.filter((b) => modelOf(b) === model);
      const oldestWaitMs = oldest ? Math.max(0, now - oldest.timestamp) : 0;
      const reason =
        mine.length === 0 ? `no live workers serve ${model}` : oldestWaitMs > this.opts.waitDeadlineMs ? `a ${model} job has waited ${oldestWaitMs} ms` : null;
      models[model] = {
        workers: mine.length,
        slots: mine.reduce((n, b) => n + b.concurrency, 0),
        waiting: (counts.waiting ?? 0) + (counts.delayed ?? 0) + (counts.prioritized ?? 0),
        active: counts.active ?? 0,
        oldestWaitMs,
        healthy: reason === null,
        reason,
        limits: mine[0]?.limits ?? null,
        model_info: mine.find((b) => b.model_info)?.model_info ?? null,
      };
    }
    const loads = Object.values(models);
    // A queue that nobody serves only waits (its runs are moved or refused per model); the region is stuck
    // when one of the models it serves has a job waiting past the deadline.
    const stuck = loads.find((m) => m.workers > 0 && m.oldestWaitMs > this.opts.waitDeadlineMs);
    const reason = beats.length === 0 ? 'no live workers' : stuck ? stuck.reason : null;
    return {
      name: r.spec.name,
      home: r === this.regions[0],
      reachable: true,
      healthy: reason === null,
      reason,
      workers: beats.length,
      slots: beats.reduce((n, b) => n + b.concurrency, 0),
      waiting: loads.reduce((n, m) => n + m.waiting, 0),
      active: loads.reduce((n, m) => n + m.active, 0),
      oldestWaitMs: Math.max(0, ...loads.filter((m) => m.workers > 0).map((m) => m.oldestWaitMs)),
      limits: beats[0]?.limits ?? null,
      models,
      checkedAt: now,
    };
  }

  private down(r: Region, reason: string): RegionState {
    return {
      name: r.spec.name, home: r === this.regions[0], reachable: false, healthy: false, reason,
      workers: 0, slots: 0, waiting: 0, active: 0, oldestWaitMs: 0, limits: null, models: {}, checkedAt: Date.now(),
    };
  }

  /** Engine limits as the workers (of `model`, when given) report them, for intake checks. */
  limits(model?: string): EngineLimits {
    for (const s of this.states.values()) {
      const limits = model ? s.models?.[model]?.limits : s.limits;
      if (limits) return limits;
    }
    return DEFAULT_ENGINE_LIMITS;
  }

  /** A model's checkpoint facts as one of its workers reports them; null while none does. */
  modelInfo(model: string): ModelFacts | null {
    for (const s of this.states.values()) {
      const info = s.models?.[model]?.model_info;
      if (info) return info;
    }
    return null;
  }
}

/** Producers do not queue commands while disconnected; a fresh or reconnecting client gets a moment to connect. */
function untilReady(redis: Redis, ms: number): Promise<void> {
  if (redis.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      clearTimeout(t);
      redis.off('ready', onReady);
      if (err) reject(err);
      else resolve();
    };
    const onReady = () => done();
    const t = setTimeout(() => done(new Error(`not connected (${redis.status})`)), ms);
    redis.on('ready', onReady);
  });
}
