// What every surface reads off a request the same way: the Idempotency-Key header, and whether the client
// is still there to be answered.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { invalidInput } from '../errors.ts';
import { MAX_IDEMPOTENCY_KEY } from '../idempotency/claim.ts';

export function idempotencyKeyHeader(req: FastifyRequest): string | null {
  const header = req.headers['idempotency-key'];
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined) return null;
  if (value.length === 0 || value.length > MAX_IDEMPOTENCY_KEY) {
    throw invalidInput([{ field: 'header.idempotency-key', reason: `must be 1 to ${MAX_IDEMPOTENCY_KEY} characters` }]);
  }
  return value;
}

/**
 * Fires when the client goes away, so a held request stops waiting. The response's 'close' is the signal:
 * the request's fires as soon as its body has been read.
 */
export function clientGone(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.once('close', () => ac.abort());
  return ac.signal;
}
