// Applies the per-key quotas to every route that creates runs (Runflow, text-to-image, OpenAI images), so
// no surface is a way around them. The slot taken on admission follows the run it created until the run
// is terminal; a request that created no live run gives its slot back when it ends.
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { callerScope } from '../idempotency/claim.ts';
import { ApiError } from '../routes/errors.ts';
import type { RunEventBus } from '../runs/events.ts';
import { isTerminal, RUN_STATUSES } from '../runs/types.ts';
import type { RateLimiter } from './rate-limiter.ts';

declare module 'fastify' {
  interface FastifyRequest {
    rateSlot?: { subject: string; slotId: string; bound: boolean };
  }
}

const CREATES_RUN = /^\/v1\/(models\/.+\/runs|images\/(edits|generations))$/;
export const createsRun = (req: FastifyRequest): boolean =>
  req.method === 'POST' && CREATES_RUN.test(req.routeOptions.url ?? '');

/** The run a create answered with, when it is still live (its slot then stays taken until it ends). */
function liveRunId(payload: unknown): string | null {
  if (typeof payload !== 'string' || payload.length > 64 * 1024) return null;
  try {
    const body = JSON.parse(payload) as { id?: unknown; status_code?: unknown };
    const status = body.status_code as (typeof RUN_STATUSES)[number];
    return typeof body.id === 'string' && RUN_STATUSES.includes(status) && !isTerminal(status) ? body.id : null;
  } catch {
    return null;
  }
}

export default fp(async function rateLimitPlugin(app: FastifyInstance, opts: { limiter: RateLimiter; bus: RunEventBus; isRepeat?: (req: FastifyRequest) => Promise<boolean> }) {
  const { limiter } = opts;
  const unsubscribe = opts.bus.subscribe('*', (ev) => {
    if (ev.type === 'status' && isTerminal(ev.run.status)) void limiter.finished(ev.run.id).catch(() => {});
  });
  app.addHook('onClose', async () => unsubscribe());

  // preHandler: after auth (onRequest) and body validation, so refused or malformed requests use no quota.
  app.addHook('preHandler', async (req) => {
    if (!createsRun(req) || (await opts.isRepeat?.(req))) return;
    const subject = callerScope(req);
    const a = await limiter.admit(subject);
    if (!a.ok) {
      const what = a.reason === 'rate' ? `${a.limit} runs per minute` : `${a.limit} runs in progress`;
      throw new ApiError(429, 'RATE_LIMITED', `rate limit reached: at most ${what} per API key; retry after ${a.retryAfterS} s`, [], {
        'retry-after': String(a.retryAfterS),
      });
    }
    req.rateSlot = { subject, slotId: a.slotId, bound: false };
  });

  app.addHook('onSend', async (req, reply, payload) => {
    const slot = req.rateSlot;
    if (!slot || slot.bound || reply.statusCode >= 300) return payload;
    const runId = liveRunId(payload);
    if (runId) {
      slot.bound = true;
      await limiter.bind(slot.subject, slot.slotId, runId);
    }
    return payload;
  });

  app.addHook('onResponse', async (req) => {
    const slot = req.rateSlot;
    if (slot && !slot.bound) await limiter.release(slot.subject, slot.slotId);
  });
});
