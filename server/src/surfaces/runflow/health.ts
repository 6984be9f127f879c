// GET /v1/health. Runflow's SDK reads `ok`; the contract's curl users read `status`. Both are sent.
// Storage that refuses writes (a full disk, a read-only database) is `degraded` with 503: runs cannot be
// created or finished until it recovers, even though reads still work.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { EngineStatusView } from '../../engine/engine.ts';
import type { StorageHealth } from '../../storage/health.ts';

const HealthSchema = z.object({
  status: z.enum(['ok', 'starting', 'degraded', 'unavailable']),
  ok: z.boolean(),
  engine: z.record(z.string(), z.unknown()),
  storage: z.object({ writable: z.boolean(), objects: z.record(z.string(), z.unknown()), runs: z.record(z.string(), z.unknown()) }).optional(),
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
};
