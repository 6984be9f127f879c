// The request-body budget: bytes of request bodies held at once, per API key and in all. The body limit bounds
// one request and quotas count runs, not bytes, so without it one key could have dozens of limit-sized bodies
// being parsed and their images decoded at once (each costing a few times its size) and take the process
// down through memory. A request with a body reserves its declared length (the route's body limit when it
// is chunked) before a byte of it is read, and gives it back once its answer is out or its connection is
// gone. Over the key's bound: 429 RATE_LIMITED; over the server's: 503 SERVER_BUSY; either way unread, with
// Retry-After. The bounds are per process: each cluster `api` replica holds only its own bodies.
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ServiceError } from '../errors.ts';
import type { Metrics } from '../metrics.ts';
import type { BodyBudgetBounds } from '../policy-config.ts';
import { callerOf, keyChecked } from './auth.ts';
import { bodyBytesOf, lingerAfterAnswer } from './upload-limit.ts';

/** Held bodies end within the request timeout or their answer, so space comes back soon; a short wait fits. */
export const BODY_RETRY_AFTER_S = 1;

export type Reservation =
  | { ok: true; release: () => void }
  | { ok: false; bound: 'key' | 'in_flight'; limit: number; held: number };

/** The accounting alone (no HTTP): what is held per key and in all, and whether a body fits. */
export class BodyBudget {
  private total = 0;
  private readonly byKey = new Map<string, number>();

  constructor(
    private readonly bounds: BodyBudgetBounds,
    private readonly onChange: (heldBytes: number) => void = () => {},
  ) {}

  get heldBytes(): number {
    return this.total;
  }

  heldBy(key: string): number {
    return this.byKey.get(key) ?? 0;
  }

  /** `key` null: a caller without a key (a public route), bounded by the server's bound only. */
  reserve(key: string | null, bytes: number): Reservation {
    const { bodyBytesPerKey: perKey, bodyBytesInFlight: inFlight } = this.bounds;
    const mine = key === null ? 0 : this.heldBy(key);
    // The key's own bound first: a key over it is told to slow down (429) even when the server is also full.
    if (key !== null && perKey && mine + bytes > perKey) return { ok: false, bound: 'key', limit: perKey, held: mine };
    if (inFlight && this.total + bytes > inFlight) return { ok: false, bound: 'in_flight', limit: inFlight, held: this.total };
    this.total += bytes;
    if (key !== null) this.byKey.set(key, mine + bytes);
    this.onChange(this.total);
    let released = false;
    return {
      ok: true,
      release: () => {
        if (released) return;
        released = true;
        this.total -= bytes;
        if (key !== null) {
          const left = this.heldBy(key) - bytes;
          if (left > 0) this.byKey.set(key, left);
          else this.byKey.delete(key);
        }
        this.onChange(this.total);
      },
    };
  }
}

function refusal(r: Extract<Reservation, { ok: false }>, bytes: number): ServiceError {
  if (r.bound === 'key') {
    const reason = `${bytes} more bytes would put this API key's request bodies in flight over its ${r.limit}-byte bound (${r.held} held)`;
    return new ServiceError('rate_limited', 'RATE_LIMITED', `${reason}; retry after ${BODY_RETRY_AFTER_S} s`, [{ field: 'body', reason }], BODY_RETRY_AFTER_S);
  }
  // Other callers' bytes are theirs: the answer says the server is full, not by whom or how much.
  const reason = 'the server is holding as many request bodies as it can at once';
  return new ServiceError('unavailable', 'SERVER_BUSY', `${reason}; retry after ${BODY_RETRY_AFTER_S} s`, [{ field: 'body', reason }], BODY_RETRY_AFTER_S);
}

export default fp(
  async function bodyBudgetPlugin(app: FastifyInstance, opts: { bounds: BodyBudgetBounds; metrics?: Metrics }) {
    if (!opts.bounds.bodyBytesPerKey && !opts.bounds.bodyBytesInFlight) return;
    const budget = new BodyBudget(opts.bounds, (held) => opts.metrics?.bodyBytesHeld.set(held));
    // onRequest, after auth's: the body is not read yet, and only a checked key gets a budget of its own.
    app.addHook('onRequest', async (req, reply) => {
      const bytes = bodyBytesOf(req);
      if (!bytes) return;
      const reservation = budget.reserve(keyChecked(req) ? callerOf(req).scope : null, bytes);
      if (!reservation.ok) {
        opts.metrics?.bodyRefusals.inc({ bound: reservation.bound });
        lingerAfterAnswer(req.raw, reply.raw);
        throw refusal(reservation, bytes);
      }
      // The answer is out ('finish'), or the connection went first (a client gone mid-body, a request timeout):
      // whichever comes first gives the bytes back, and the listeners go with it (a keep-alive socket lives on).
      const res = reply.raw;
      const socket = req.raw.socket;
      const done = () => {
        reservation.release();
        res.off('finish', done);
        res.off('close', done);
        socket?.off('close', done);
      };
      res.once('finish', done);
      res.once('close', done);
      socket?.once('close', done);
      // A connection that closed while earlier hooks ran will send no event any more.
      if (!socket || socket.destroyed) done();
    });
  },
  { name: 'body-budget', dependencies: ['auth'] },
);
