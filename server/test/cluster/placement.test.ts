// Region choice and backpressure, from region states (pure logic; the scenarios exercise it for real).
import { describe, expect, it } from 'vitest';
import { chooseRegion, Placement, type PlacementOptions } from '../../src/cluster/placement.ts';
import type { RegionState } from '../../src/cluster/region-monitor.ts';

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
    expect(() => p.place('r1')).toThrow(expect.objectContaining({ statusCode: 429, code: 'RATE_LIMITED', headers: { 'retry-after': '7' } }));
  });

  it('queue: parks runs unplaced within the global bound, then 429', () => {
    const p = new Placement(() => full, { ...opts, backpressure: 'queue' });
    p.refreshed(3);
    expect(p.place('r1')).toBeNull();
    expect(p.place('r2')).toBeNull();
    expect(() => p.place('r3')).toThrow(expect.objectContaining({ code: 'RATE_LIMITED' }));
    expect(p.take('r1')).toMatchObject({ region: null });
  });

  it('remembers the chosen region for the insert and the enqueue, once', () => {
    const p = new Placement(() => [region('a')], opts);
    expect(p.place('r1')).toBe('a');
    expect(p.regionOf('r1')).toBe('a');
    expect(p.take('r1')).toMatchObject({ region: 'a' });
    expect(p.take('r1')).toBeUndefined();
  });
});
