// In-process quotas for the single-process `serve` role.
import { randomUUID } from 'node:crypto';
import { secondsToNextMinute, type Admission, type Quota, type RateLimiter } from './rate-limiter.ts';

export class MemoryRateLimiter implements RateLimiter {
  /** subject -> slot id -> expiry */
  private readonly slots = new Map<string, Map<string, number>>();
  private readonly windows = new Map<string, { minute: number; count: number }>();
  /** run id -> its slot, or 'done' when the run ended before (or without) being bound. */
  private readonly byRun = new Map<string, { subject: string; slotId: string } | 'done'>();

  constructor(private readonly quota: Quota) {}

  async admit(subject: string, now = Date.now()): Promise<Admission> {
    const { maxConcurrent, perMinute, slotTtlMs } = this.quota;
    const slots = this.liveSlots(subject, now);
    if (maxConcurrent && slots.size >= maxConcurrent) return { ok: false, reason: 'concurrency', retryAfterS: 1, limit: maxConcurrent };
    const minute = Math.floor(now / 60_000);
    const w = this.windows.get(subject);
    const count = w && w.minute === minute ? w.count : 0;
    if (perMinute && count >= perMinute) return { ok: false, reason: 'rate', retryAfterS: secondsToNextMinute(now), limit: perMinute };
    this.windows.set(subject, { minute, count: count + 1 });
    const slotId = randomUUID();
    slots.set(slotId, now + slotTtlMs);
    return { ok: true, slotId };
  }

  async bind(subject: string, slotId: string, runId: string): Promise<void> {
    // A replayed create (idempotency) or a run that already ended must not hold a second slot.
    if (this.byRun.has(runId)) return this.release(subject, slotId);
    this.byRun.set(runId, { subject, slotId });
  }

  async release(subject: string, slotId: string): Promise<void> {
    this.slots.get(subject)?.delete(slotId);
  }

  async finished(runId: string): Promise<void> {
    const s = this.byRun.get(runId);
    this.byRun.delete(runId);
    if (s && s !== 'done') return this.release(s.subject, s.slotId);
    this.byRun.set(runId, 'done');
    // Bounded memory: forget the oldest 'done' marks (a Map iterates in insertion order).
    if (this.byRun.size > 100_000) for (const [id, v] of this.byRun) if (v === 'done' && this.byRun.delete(id) && this.byRun.size < 90_000) break;
  }

  async close(): Promise<void> {}

  private liveSlots(subject: string, now: number): Map<string, number> {
    let slots = this.slots.get(subject);
    if (!slots) this.slots.set(subject, (slots = new Map()));
    for (const [id, expiry] of slots) if (expiry <= now) slots.delete(id);
    return slots;
  }
}
