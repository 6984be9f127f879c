// The api's view of every region, refreshed on a timer: is its Redis reachable, how many workers heartbeat,
// how deep is its queue, how long has its oldest job waited. Health is derived from these three signals.
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { DEFAULT_ENGINE_LIMITS, type EngineLimits } from '../engine/limits.ts';
import { openQueue, type RunJobData } from '../dispatch/bullmq-queue.ts';
import { readHeartbeats } from './heartbeat.ts';
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
  checkedAt: number;
}

export interface Region {
  spec: RegionSpec;
  redis: Redis;
  queue: Queue<RunJobData>;
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
      return { spec, redis, queue: openQueue(redis) };
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
    await Promise.all(this.regions.map((r) => r.queue.close().catch(() => {})));
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
    const [counts, beats, oldest] = await Promise.all([
      r.queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized'),
      readHeartbeats(r.redis).then((all) => all.filter((b) => b.engine !== 'unavailable')),
      r.queue.getJobs(['wait'], 0, 0, true),
    ]);
    const now = Date.now();
    const oldestWaitMs = oldest[0] ? Math.max(0, now - oldest[0].timestamp) : 0;
    const waiting = (counts.waiting ?? 0) + (counts.delayed ?? 0) + (counts.prioritized ?? 0);
    const reason =
      beats.length === 0 ? 'no live workers' : oldestWaitMs > this.opts.waitDeadlineMs ? `a job has waited ${oldestWaitMs} ms` : null;
    return {
      name: r.spec.name,
      home: r === this.regions[0],
      reachable: true,
      healthy: reason === null,
      reason,
      workers: beats.length,
      slots: beats.reduce((n, b) => n + b.concurrency, 0),
      waiting,
      active: counts.active ?? 0,
      oldestWaitMs,
      limits: beats[0]?.limits ?? null,
      checkedAt: now,
    };
  }

  private down(r: Region, reason: string): RegionState {
    return {
      name: r.spec.name, home: r === this.regions[0], reachable: false, healthy: false, reason,
      workers: 0, slots: 0, waiting: 0, active: 0, oldestWaitMs: 0, limits: null, checkedAt: Date.now(),
    };
  }

  /** Engine limits as the workers report them (all workers serve the same model), for intake checks. */
  limits(): EngineLimits {
    for (const s of this.states.values()) if (s.limits) return s.limits;
    return DEFAULT_ENGINE_LIMITS;
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
