// Region choice and backpressure, from region states (pure logic; the scenarios exercise it for real).
import { describe, expect, it } from 'vitest';
import { chooseRegion, Placement, type PlacementOptions } from '../../src/cluster/placement.ts';
import { pino } from 'pino';
import type { ClusterMetrics } from '../../src/cluster/metrics.ts';
import { RegionAdmission } from '../../src/cluster/region-admission.ts';
import type { RegionMonitor, RegionState } from '../../src/cluster/region-monitor.ts';
import type { RunRecord } from '../../src/runs/types.ts';

const opts: PlacementOptions = { regionQueueLimit: 10, backpressure: 'reject', globalQueueLimit: 5, retryAfterSeconds: 7 };
const region = (name: string, s: Partial<RegionState> = {}): RegionState => ({
  name, home: name === 'a', reachable: true, healthy: true, reason: null, workers: 1, slots: 2,
  waiting: 0, active: 0, oldestWaitMs: 0, limits: null, checkedAt: 0, ...s,
});

describe('chooseRegion', () => {
  it('prefers home while it has idle slots, then the region with the most idle slots', () => {
    expect(chooseRegion([region('a'), region('b', { slots: 8 })], new Map(), opts)).toBe('a');
    expect(chooseRegion([region('a', { active: 2 }), region('b', { slots: 8, active: 3 }), region('c', { slots: 4 })], new Map(), opts)).toBe('b');
  });

  it('counts runs placed since the states were read', () => {
    expect(chooseRegion([region('a'), region('b')], new Map([['a', 2]]), opts)).toBe('b');
  });

  it('queues at home when every region is busy, until its queue limit', () => {
    const busy = [region('a', { active: 2, waiting: 3 }), region('b', { active: 2, waiting: 1 })];
    expect(chooseRegion(busy, new Map(), opts)).toBe('a');
    expect(chooseRegion([region('a', { active: 2, waiting: 10 }), region('b', { active: 2, waiting: 1 })], new Map(), opts)).toBe('b');
  });

  it('avoids unhealthy regions; a slow-but-live one is used only when allowed and nothing healthy can take it', () => {
    const slow = region('a', { healthy: false, reason: 'a job has waited 70000 ms' });
    const down = region('b', { healthy: false, reachable: false, workers: 0, slots: 0 });
    expect(chooseRegion([slow, region('c')], new Map(), opts)).toBe('c');
    expect(chooseRegion([slow, down], new Map(), opts)).toBeNull();
    expect(chooseRegion([slow, down], new Map(), opts, true)).toBe('a');
    expect(chooseRegion([down], new Map(), opts, true)).toBeNull();
  });
});

describe('Placement backpressure', () => {
  const full = [region('a', { active: 2, waiting: 10 }), region('b', { healthy: false, reachable: false })];

  it('reject: 429 RATE_LIMITED with Retry-After when no region can take the run', () => {
    const p = new Placement(() => full, opts);
    expect(() => p.place()).toThrow(expect.objectContaining({ kind: 'rate_limited', code: 'RATE_LIMITED', retryAfterSeconds: 7 }));
  });

  it('queue: parks runs unplaced within the global bound, then 429', () => {
    const p = new Placement(() => full, { ...opts, backpressure: 'queue' });
    p.refreshed(3);
    expect(p.place()).toBeNull();
    expect(p.place()).toBeNull();
    expect(() => p.place()).toThrow(expect.objectContaining({ code: 'RATE_LIMITED' }));
  });

  it('a run admitted while the sweep counts is not forgotten when the count comes back without it', () => {
    const p = new Placement(() => full, { ...opts, backpressure: 'queue' });
    p.refreshed(4);
    const before = p.admitted; // the sweep starts reading
    expect(p.place()).toBeNull(); // admitted meanwhile; the count below was taken before its insert
    p.refreshed(4, before);
    expect(p.unfinished).toBe(5);
    expect(() => p.place()).toThrow(expect.objectContaining({ code: 'RATE_LIMITED' }));
  });
});

describe('RegionAdmission', () => {
  const logger = pino({ level: 'silent' });
  const metrics = { enqueueErrors: { inc() {} } } as unknown as ClusterMetrics;
  const run = { id: 'r1', status: 'queued', model_id: 'black-forest-labs/flux-2-klein-4b/edit' } as RunRecord;

  it('writes the chosen region on the run it stores, and enqueues on that region', async () => {
    const enqueued: string[] = [];
    const queue = { add: async (_n: string, d: { runId: string }) => void enqueued.push(d.runId) };
    const monitor = { region: (name: string) => (name === 'a' ? { spec: { name }, queues: new Map([['black-forest-labs/flux-2-klein-4b', queue]]) } : undefined) } as unknown as RegionMonitor;
    const admission = new RegionAdmission(new Placement(() => [region('a')], opts), monitor, metrics, logger);
    const stored: RunRecord[] = [];
    const created = await admission.admit(run, new Map(), async (r) => (stored.push(r), r));
    expect(stored).toEqual([expect.objectContaining({ id: 'r1', region: 'a' })]);
    expect(created.region).toBe('a');
    await new Promise((r) => setTimeout(r, 10));
    expect(enqueued).toEqual(['r1']);
  });

  it('parks a run with no region under backpressure "queue", and stores nothing when the cluster is full', async () => {
    const monitor = { region: () => undefined } as unknown as RegionMonitor;
    const full = [region('a', { active: 2, waiting: 10 })];
    const parking = new RegionAdmission(new Placement(() => full, { ...opts, backpressure: 'queue' }), monitor, metrics, logger);
    expect((await parking.admit(run, new Map(), async (r) => r)).region).toBeNull();
    const refusing = new RegionAdmission(new Placement(() => full, opts), monitor, metrics, logger);
    const stored: RunRecord[] = [];
    await expect(refusing.admit(run, new Map(), async (r) => (stored.push(r), r))).rejects.toMatchObject({ code: 'RATE_LIMITED' });
    expect(stored).toEqual([]);
  });
});
