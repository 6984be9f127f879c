import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Engine } from '../engine/supervisor.ts';

const HealthSchema = z.object({
  status: z.enum(['ok', 'starting', 'unavailable']),
  ok: z.boolean(),
  engine: z.record(z.string(), z.unknown()),
});

// Runflow's SDK reads `ok`; the contract's curl users read `status`. Both are sent.
const healthRoutes: FastifyPluginAsyncZod<{ engine: Engine }> = async (app, { engine }) => {
  app.get(
    '/v1/health',
    { config: { public: true }, schema: { summary: 'Service and engine health', tags: ['health'], response: { 200: HealthSchema, 503: HealthSchema } } },
    async (_req, reply) => {
      const e = engine.status();
      const down = e.status === 'unavailable' || e.status === 'stopped';
      const status = e.status === 'ready' ? 'ok' : down ? 'unavailable' : 'starting';
      return reply.code(down ? 503 : 200).send({ status, ok: e.status === 'ready', engine: { ...e } });
    },
  );
};

export default healthRoutes;
