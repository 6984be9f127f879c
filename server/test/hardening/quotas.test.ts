// The quota rules, on the in-memory limiter (time passed in) and on the Redis one against a real
// redis-server (on a private unix socket), so both sides of the one interface obey the same rules.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryRateLimiter } from '../../src/quotas/memory-rate-limiter.ts';
import { RedisRateLimiter } from '../../src/quotas/redis-rate-limiter.ts';
import type { Quota, RateLimiter } from '../../src/quotas/rate-limiter.ts';
import { tmpDir } from '../helpers/server.ts';

const QUOTA: Quota = { maxConcurrent: 2, perMinute: 5, slotTtlMs: 10_000 };
const MINUTE = 1_800_000_000_000; // a minute boundary, so windows are predictable

function rules(make: () => Promise<RateLimiter>) {
  it('admits up to maxConcurrent live runs, then 429s until one finishes', async () => {
    const l = await make();
    const a = await l.admit('k1', MINUTE);
    const b = await l.admit('k1', MINUTE + 1);
    expect(a.ok && b.ok).toBe(true);
    const c = await l.admit('k1', MINUTE + 2);
    expect(c).toMatchObject({ ok: false, reason: 'concurrency', limit: 2 });
    expect((await l.admit('k2', MINUTE + 2)).ok).toBe(true); // another key is not affected
    if (!a.ok) throw new Error();
    await l.bind('k1', a.slotId, 'run-a');
    await l.finished('run-a');
    expect((await l.admit('k1', MINUTE + 3)).ok).toBe(true);
  });

  it('a request that created no live run gives its slot back', async () => {
    const l = await make();
    const a = await l.admit('k3', MINUTE);
    await l.admit('k3', MINUTE);
    if (!a.ok) throw new Error();
    await l.release('k3', a.slotId);
    expect((await l.admit('k3', MINUTE)).ok).toBe(true);
  });

  it('a replayed run id, or a run that already ended, does not hold a second slot', async () => {
    const l = await make();
    const a = await l.admit('k4', MINUTE);
    const b = await l.admit('k4', MINUTE);
    if (!a.ok || !b.ok) throw new Error();
    await l.finished('run-early'); // ended before its create answered
    await l.bind('k4', a.slotId, 'run-early');
    await l.bind('k4', b.slotId, 'run-x');
    expect((await l.admit('k4', MINUTE)).ok).toBe(true);
  });

  it('counts creations per minute and says when the window ends', async () => {
    const l = await make();
    for (let i = 0; i < 5; i++) {
      const a = await l.admit('k5', MINUTE + 40_000);
      if (!a.ok) throw new Error(`refused ${i}`);
      await l.release('k5', a.slotId);
    }
    const refused = await l.admit('k5', MINUTE + 40_000);
    expect(refused).toMatchObject({ ok: false, reason: 'rate', retryAfterS: 20 });
    expect((await l.admit('k5', MINUTE + 60_000)).ok).toBe(true); // next window
  });

  it('frees a slot whose end was never reported after slotTtlMs', async () => {
    const l = await make();
    await l.admit('k6', MINUTE);
    await l.admit('k6', MINUTE);
    expect((await l.admit('k6', MINUTE + 9_000)).ok).toBe(false);
    expect((await l.admit('k6', MINUTE + 10_001)).ok).toBe(true);
  });
}

describe('MemoryRateLimiter', () => rules(async () => new MemoryRateLimiter(QUOTA)));

describe('RedisRateLimiter (real redis-server)', () => {
  let proc: ChildProcess;
  let redis: Redis;
  let dir: string;
  let n = 0;
  beforeAll(async () => {
    dir = tmpDir('ks-redis-');
    const sock = path.join(dir, 'redis.sock');
    let spawnError: Error | null = null;
    proc = spawn('redis-server', ['--port', '0', '--unixsocket', sock, '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
    proc.on('error', (err) => (spawnError = err));
    for (let i = 0; i < 100 && !fs.existsSync(sock) && !spawnError; i++) await new Promise((r) => setTimeout(r, 50));
    if (spawnError || !fs.existsSync(sock)) throw new Error(`redis-server did not start (is it installed? apt-get install redis-server): ${spawnError ?? 'no socket'}`);
    redis = new Redis({ path: sock });
  });
  afterAll(async () => {
    redis?.disconnect();
    proc?.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  // A fresh key prefix per case stands in for a fresh Redis.
  rules(async () => new RedisRateLimiter(redis, QUOTA, `t${n++}:`));

  it('two replicas sharing Redis cannot both take the last slot', async () => {
    const a = new RedisRateLimiter(redis, QUOTA, 'race:');
    const b = new RedisRateLimiter(redis, QUOTA, 'race:');
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).admit('shared', MINUTE)));
    expect(results.filter((r) => r.ok)).toHaveLength(2);
  });
});
