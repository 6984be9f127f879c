// GET /v1/health (liveness and engine state; Runflow's SDK reads `ok`, curl users read `status`, both are
// sent) and GET /v1/readiness (a load balancer's probe: 200 only while runs can start at once).
// Storage that refuses writes (a full disk, a read-only database) is `degraded` with 503: runs cannot be
// created or finished until it recovers, even though reads still work.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { EngineStatusView } from '../../engine/engine.ts';
import type { StorageHealth } from '../../storage/health.ts';

/** Whether a store (`objects`: inputs and outputs; `runs`: the run database) takes writes. */
const StoreStateSchema = z.object({ writable: z.boolean(), error: z.string().optional(), checked_at: z.number().nullable() });

const ReadinessSchema = z.object({ ready: z.boolean(), status: z.string() });

const HealthSchema = z.object({
  status: z.enum(['ok', 'starting', 'degraded', 'unavailable']),
  ok: z.boolean(),
  engine: z.record(z.string(), z.unknown()),
  storage: z.object({ writable: z.boolean(), objects: StoreStateSchema, runs: StoreStateSchema }).optional(),
});

export const healthRoutes: FastifyPluginAsyncZod<{ engine: EngineStatusView; storage?: Pick<StorageHealth, 'snapshot'> }> = async (app, { engine, storage }) => {
  app.get(
    '/v1/health',
    { config: { public: true }, schema: { summary: 'Service and engine health', tags: ['health'], response: { 200: HealthSchema, 503: HealthSchema } } },
    async (_req, reply) => {
      const e = engine.status();
      const stored = storage?.snapshot();
      const down = e.status === 'unavailable' || e.status === 'stopped';
      const unwritable = stored?.writable === false;
      const status = down ? 'unavailable' : unwritable ? 'degraded' : e.status === 'ready' ? 'ok' : 'starting';
      return reply
        .code(down || unwritable ? 503 : 200)
        .send({ status, ok: e.status === 'ready' && !unwritable, engine: { ...e }, ...(stored ? { storage: stored } : {}) });
    },
  );
  app.get(
    '/v1/readiness',
    {
      config: { public: true },
      schema: { summary: 'Ready to run: 200 once the engine is ready (and storage writable), 503 before', tags: ['health'], response: { 200: ReadinessSchema, 503: ReadinessSchema } },
    },
    async (_req, reply) => {
      const ready = engine.state === 'ready' && storage?.snapshot().writable !== false;
      return reply.code(ready ? 200 : 503).send({ ready, status: engine.state });
    },
  );
};
