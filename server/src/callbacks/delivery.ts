// Callback delivery from the persisted outbox: signed POSTs, exponential backoff, bounded attempts. It runs
// apart from the dispatcher, so a slow or failing receiver never delays a run; restarts resume pending rows.
// Slots are shared fairly: each attempt has one deadline for all of it (connect, headers, body), and one
// receiver host holds at most `perReceiver` of the slots, so slow receivers cannot starve the others.
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { request, type Agent } from 'undici';
import { guardedAgent, type FetchAllowlist } from '../images/index.ts';
import type { Delivery, DeliveryStore } from '../runs/store.ts';
import { receiverOf, receiverUrlPatterns } from './receiver.ts';
import { sign, signatureHeaders } from './signing.ts';

export interface DeliveryOptions {
  store: DeliveryStore;
  secret: string;
  logger: Logger;
  allowlist: FetchAllowlist;
  maxAttempts: number;
  baseDelayMs: number;
  /** Deadline for a whole attempt: name check, connect, sending, and the answer's status and headers. */
  timeoutMs: number;
  /** Delivery slots (attempts in flight at once). */
  concurrency?: number;
  /** Slots one receiver host may hold at once; default a quarter of the slots (at least one). */
  perReceiver?: number;
}

export { sign };

/** Delay before attempt n+1 after n failures: base * 2^(n-1), capped at an hour, with +-20% jitter. */
export function backoffMs(base: number, failures: number): number {
  const raw = Math.min(base * 2 ** (failures - 1), 3_600_000);
  return Math.round(raw * (0.8 + Math.random() * 0.4));
}

export class CallbackDeliverer {
  private timer?: NodeJS.Timeout;
  private inFlight = new Map<number, string>();
  private stopped = false;
  private readonly slots: number;
  private readonly perReceiver: number;

  constructor(private readonly opts: DeliveryOptions) {
    this.slots = opts.concurrency ?? 8;
    this.perReceiver = Math.max(1, Math.min(this.slots, opts.perReceiver ?? Math.floor(this.slots / 4)));
  }

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

  /** Attempts in flight per receiver host (for tests and diagnostics). */
  holders(): Map<string, number> {
    const out = new Map<string, number>();
    for (const host of this.inFlight.values()) out.set(host, (out.get(host) ?? 0) + 1);
    return out;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick().catch((err) => this.opts.logger.error({ err }, 'callback loop failed')), ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    const free = this.slots - this.inFlight.size;
    if (free > 0) {
      const full = [...this.holders()].filter(([, n]) => n >= this.perReceiver).map(([host]) => host);
      const due = await this.opts.store.dueDeliveries(Date.now(), free, full.flatMap(receiverUrlPatterns));
      const unused: number[] = [];
      for (const d of due) {
        // Counted afresh: another tick may have started attempts while this one awaited the store.
        const host = receiverOf(d.url);
        const busy = (this.holders().get(host) ?? 0) >= this.perReceiver;
        if (this.inFlight.has(d.id) || busy || this.inFlight.size >= this.slots) {
          unused.push(d.id);
          continue;
        }
        this.inFlight.set(d.id, host);
        this.deliver(d)
          .catch((err) => this.opts.logger.error({ err, delivery_id: d.id }, 'recording a callback attempt failed'))
          .finally(() => {
            this.inFlight.delete(d.id);
            this.schedule(0);
          });
      }
      // A store that claims rows (Postgres) gets back the ones left for a busy receiver, so they are not
      // held back for the claim period.
      if (unused.length) await this.opts.store.releaseDeliveries?.(unused.filter((id) => !this.inFlight.has(id)));
    }
    const next = await this.opts.store.nextDueAt();
    if (next !== null) this.schedule(Math.max(50, Math.min(next - Date.now(), 60_000)));
  }

  private async deliver(d: Delivery): Promise<void> {
    // One id per attempt, sent as Runflow-Request-Id and recorded, so sender and receiver logs can be matched.
    const requestId = randomUUID();
    const log = this.opts.logger.child({ run_id: d.run_id, delivery_id: d.id, request_id: requestId });
    let error: string | null = null;
    let dispatcher: Agent | undefined;
    // One deadline for the whole attempt (name check, connect, sending, the answer's headers): undici's own
    // timeouts only bound the gap between two reads, so a receiver dripping a byte at a time would
    // otherwise hold its slot for as long as it kept dripping.
    const deadline = AbortSignal.timeout(this.opts.timeoutMs);
    try {
      const url = new URL(d.url);
      // Pinned to the checked address: checking the name and then connecting by name would let a
      // rebinding DNS answer turn a callback into a request to a private address.
      const agent = guardedAgent(url, 'callback_url', this.opts.allowlist, { connectTimeoutMs: this.opts.timeoutMs });
      // An agent that arrives after the deadline was never used: close it.
      agent.then((a) => void (deadline.aborted && a.destroy().catch(() => {})), () => {});
      dispatcher = await untilAborted(agent, deadline);
      const res = await request(url, {
        dispatcher,
        method: 'POST',
        body: d.body,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'kleinserve-callbacks/1',
          ...signatureHeaders(this.opts.secret, { messageId: `${d.run_id}.${d.id}`, runId: d.run_id, body: d.body, signing: d.signing }),
          'runflow-event': d.event,
          'runflow-delivery': String(d.id),
          'runflow-request-id': requestId,
        },
        signal: deadline,
        headersTimeout: this.opts.timeoutMs,
        bodyTimeout: this.opts.timeoutMs,
      });
      // The status is the whole answer: the body is dropped unread (with its connection), so a receiver that
      // drips its body after the status cannot hold the slot past its headers.
      res.body.on('error', () => {}).destroy();
      if (res.statusCode < 200 || res.statusCode >= 300) error = `receiver answered HTTP ${res.statusCode}`;
    } catch (err) {
      error = deadline.aborted ? `no complete answer within ${this.opts.timeoutMs} ms` : (err as Error).message;
    } finally {
      dispatcher?.destroy().catch(() => {});
    }
    const failures = d.attempts + 1;
    if (!error) {
      log.info({ attempts: failures }, 'callback delivered');
      await this.opts.store.recordAttempt(d.id, { delivered: true, next_attempt_at: null, error: null, request_id: requestId });
      return;
    }
    const giveUp = failures >= this.opts.maxAttempts;
    const next = giveUp ? null : Date.now() + backoffMs(this.opts.baseDelayMs, failures);
    log.warn({ attempts: failures, error, give_up: giveUp }, 'callback delivery failed');
    await this.opts.store.recordAttempt(d.id, { delivered: false, next_attempt_at: next, error, request_id: requestId });
  }
}

/** `work`, or a rejection as soon as `signal` aborts (the work itself is left to finish on its own). */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
