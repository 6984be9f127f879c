// Callback delivery from the persisted outbox: signed POSTs, exponential backoff, bounded attempts. It runs
// apart from the dispatcher, so a slow or failing receiver never delays a run; restarts resume pending rows.
import { createHmac } from 'node:crypto';
import type { Logger } from 'pino';
import { request, type Agent } from 'undici';
import { guardedAgent, type FetchAllowlist } from '../images/index.ts';
import type { Delivery, DeliveryStore } from '../runs/store.ts';

export interface DeliveryOptions {
  store: DeliveryStore;
  secret: string;
  logger: Logger;
  allowlist: FetchAllowlist;
  maxAttempts: number;
  baseDelayMs: number;
  timeoutMs: number;
  concurrency?: number;
}

export const sign = (secret: string, body: string): string => createHmac('sha256', secret).update(body).digest('hex');

/** Delay before attempt n+1 after n failures: base * 2^(n-1), capped at an hour, with +-20% jitter. */
export function backoffMs(base: number, failures: number): number {
  const raw = Math.min(base * 2 ** (failures - 1), 3_600_000);
  return Math.round(raw * (0.8 + Math.random() * 0.4));
}

export class CallbackDeliverer {
  private timer?: NodeJS.Timeout;
  private inFlight = new Set<number>();
  private stopped = false;

  constructor(private readonly opts: DeliveryOptions) {}

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** Called when a terminal transition wrote a delivery row. */
  kick(): void {
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick().catch((err) => this.opts.logger.error({ err }, 'callback loop failed')), ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    const limit = (this.opts.concurrency ?? 8) - this.inFlight.size;
    if (limit > 0) {
      const due = await this.opts.store.dueDeliveries(Date.now(), limit + this.inFlight.size);
      for (const d of due) {
        if (this.inFlight.has(d.id) || this.inFlight.size >= (this.opts.concurrency ?? 8)) continue;
        this.inFlight.add(d.id);
        this.deliver(d).finally(() => {
          this.inFlight.delete(d.id);
          this.schedule(0);
        });
      }
    }
    const next = await this.opts.store.nextDueAt();
    if (next !== null) this.schedule(Math.max(50, Math.min(next - Date.now(), 60_000)));
  }

  private async deliver(d: Delivery): Promise<void> {
    const log = this.opts.logger.child({ run_id: d.run_id, delivery_id: d.id });
    let error: string | null = null;
    let dispatcher: Agent | undefined;
    try {
      const url = new URL(d.url);
      // Pinned to the checked address: checking the name and then connecting by name would let a
      // rebinding DNS answer turn a callback into a request to a private address.
      dispatcher = await guardedAgent(url, 'callback_url', this.opts.allowlist);
      const res = await request(url, {
        dispatcher,
        method: 'POST',
        body: d.body,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'kleinserve-callbacks/1',
          'runflow-signature': sign(this.opts.secret, d.body),
          'runflow-event': d.event,
          'runflow-delivery': String(d.id),
        },
        headersTimeout: this.opts.timeoutMs,
        bodyTimeout: this.opts.timeoutMs,
      });
      await res.body.dump();
      if (res.statusCode < 200 || res.statusCode >= 300) error = `receiver answered HTTP ${res.statusCode}`;
    } catch (err) {
      error = (err as Error).message;
    } finally {
      dispatcher?.destroy().catch(() => {});
    }
    const failures = d.attempts + 1;
    if (!error) {
      log.info({ attempts: failures }, 'callback delivered');
      await this.opts.store.recordAttempt(d.id, { delivered: true, next_attempt_at: null, error: null });
      return;
    }
    const giveUp = failures >= this.opts.maxAttempts;
    const next = giveUp ? null : Date.now() + backoffMs(this.opts.baseDelayMs, failures);
    log.warn({ attempts: failures, error, give_up: giveUp }, 'callback delivery failed');
    await this.opts.store.recordAttempt(d.id, { delivered: false, next_attempt_at: next, error });
  }
}
