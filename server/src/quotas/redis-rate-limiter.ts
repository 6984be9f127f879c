// Cluster quotas: the counters live in Redis so every API replica sees the same numbers. One Lua script
// checks and counts atomically, so two replicas cannot both admit the last slot.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { secondsToNextMinute, type Admission, type Quota, type RateLimiter } from './rate-limiter.ts';

// KEYS: slots zset, minute counter. ARGV: now, slot ttl, max concurrent, per minute, slot id.
// Returns 0 when admitted, 1 when over concurrency, 2 when over the per-minute rate.
const ADMIT = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local max = tonumber(ARGV[3])
if max > 0 and redis.call('ZCARD', KEYS[1]) >= max then return 1 end
local per = tonumber(ARGV[4])
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if per > 0 and n >= per then return 2 end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 120000)
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[5])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 0
`;

export class RedisRateLimiter implements RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly quota: Quota,
    private readonly prefix = 'ks:rl:',
  ) {}

  private slotsKey = (subject: string) => `${this.prefix}slots:{${subject}}`;
  private runKey = (runId: string) => `${this.prefix}run:${runId}`;

  async admit(subject: string, now = Date.now()): Promise<Admission> {
    const { maxConcurrent, perMinute, slotTtlMs } = this.quota;
    const slotId = randomUUID();
    const minuteKey = `${this.prefix}rpm:{${subject}}:${Math.floor(now / 60_000)}`;
    const r = Number(
      await this.redis.eval(ADMIT, 2, this.slotsKey(subject), minuteKey, now, slotTtlMs, maxConcurrent, perMinute, slotId),
    );
    if (r === 1) return { ok: false, reason: 'concurrency', retryAfterS: 1, limit: maxConcurrent };
    if (r === 2) return { ok: false, reason: 'rate', retryAfterS: secondsToNextMinute(now), limit: perMinute };
    return { ok: true, slotId };
  }

  async bind(subject: string, slotId: string, runId: string): Promise<void> {
    // NX: a replayed create (idempotency) or a run that already ended must not hold a second slot.
    const set = await this.redis.set(this.runKey(runId), JSON.stringify({ subject, slotId }), 'PX', this.quota.slotTtlMs, 'NX');
    if (set === null) await this.release(subject, slotId);
  }

  async release(subject: string, slotId: string): Promise<void> {
    await this.redis.zrem(this.slotsKey(subject), slotId);
  }

  async finished(runId: string): Promise<void> {
    const raw = await this.redis.set(this.runKey(runId), 'done', 'PX', this.quota.slotTtlMs, 'GET');
    if (!raw || raw === 'done') return;
    const { subject, slotId } = JSON.parse(raw) as { subject: string; slotId: string };
    await this.release(subject, slotId);
  }

  async close(): Promise<void> {}
}
