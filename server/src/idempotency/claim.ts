// Request -> idempotency claim. The key is the `Idempotency-Key` header, else the body's `client_ref`,
// scoped to the caller's API key (by hash) so two customers never share a key space.
import type { FastifyRequest } from 'fastify';
import { hashKey } from '../auth/keys.ts';
import { ApiError, validationError } from '../routes/errors.ts';
import type { IdempotencyStore } from './store.ts';

export interface IdempotencyOptions {
  store: IdempotencyStore;
  windowMs: number;
  /** How long a reservation without a run may block others: longer than any intake (URL checks, decoding). */
  staleMs?: number;
  /** How long a repeat waits for the first request to finish creating its run. */
  waitMs?: number;
}

export type Claim =
  | { kind: 'none' }
  | { kind: 'existing'; runId: string }
  | { kind: 'new'; bind(runId: string): Promise<void>; release(): Promise<void> };

const MAX_KEY = 255;

export function idempotencyKeyOf(req: FastifyRequest, clientRef: string | null | undefined): string | null {
  const header = req.headers['idempotency-key'];
  const value = Array.isArray(header) ? header[0] : header;
  if (value !== undefined) {
    if (value.length === 0 || value.length > MAX_KEY) {
      throw validationError([{ field: 'header.idempotency-key', reason: `must be 1 to ${MAX_KEY} characters` }]);
    }
    return value;
  }
  return clientRef ? clientRef : null;
}

/** The caller's identity for idempotency and quotas: the hash of its bearer key, never the key itself. */
export function callerScope(req: FastifyRequest): string {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m ? hashKey(m[1]) : 'anonymous';
}

/** A repeat of an earlier create (same key, in the window): it creates nothing, so quotas let it through. */
export async function isRepeat(opts: IdempotencyOptions, req: FastifyRequest): Promise<boolean> {
  const body = req.body as { client_ref?: unknown } | undefined;
  const clientRef = typeof body?.client_ref === 'string' ? body.client_ref : null;
  let key: string | null;
  try {
    key = idempotencyKeyOf(req, clientRef);
  } catch {
    return false; // the route itself answers the bad header
  }
  return key !== null && opts.store.isLive(callerScope(req), key, Date.now(), opts.windowMs);
}

export async function claimIdempotency(opts: IdempotencyOptions, scope: string, key: string | null): Promise<Claim> {
  if (key === null) return { kind: 'none' };
  const staleMs = opts.staleMs ?? 120_000;
  const deadline = Date.now() + (opts.waitMs ?? 30_000);
  for (;;) {
    const r = await opts.store.reserve(scope, key, Date.now(), opts.windowMs, staleMs);
    if (r.won) {
      return {
        kind: 'new',
        bind: (runId) => opts.store.bind(scope, key, runId),
        release: () => opts.store.release(scope, key),
      };
    }
    if (r.runId) return { kind: 'existing', runId: r.runId };
    if (Date.now() > deadline) {
      throw new ApiError(409, 'IDEMPOTENCY_CONFLICT', 'a request with the same idempotency key is still being processed; retry shortly', [], {
        'retry-after': '1',
      });
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
