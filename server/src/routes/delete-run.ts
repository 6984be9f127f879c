// DELETE /v1/runs/{id}: the caller's right to erasure. A live run is canceled first, then its inputs,
// outputs and record are erased; a GET afterwards answers 404.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RunLifecycle } from '../runs/lifecycle.ts';
import { isTerminal } from '../runs/types.ts';
import type { RetentionSweeper } from '../retention/sweeper.ts';
import { runNotFound } from './errors.ts';
import { errorResponses, RunIdParamsSchema } from './runs.schemas.ts';

const DeletedSchema = z.object({ id: z.string(), deleted: z.literal(true) });

export const deleteRunRoutes: FastifyPluginAsyncZod<{ lifecycle: RunLifecycle; retention: RetentionSweeper }> = async (app, opts) => {
  const { store } = opts.lifecycle;
  app.delete(
    '/v1/runs/:id',
    {
      schema: {
        summary: "Delete a run: cancel it if live, then erase its inputs, outputs and record",
        tags: ['runs'],
        params: RunIdParamsSchema,
        response: { 200: DeletedSchema, ...errorResponses },
      },
    },
    async (req) => {
      const run = await store.get(req.params.id);
      if (!run) throw runNotFound(req.params.id);
      if (!isTerminal(run.status)) await opts.lifecycle.cancel(run);
      const latest = await store.get(run.id);
      if (!latest) throw runNotFound(req.params.id);
      await opts.retention.delete(latest);
      req.log.info({ run_id: run.id }, 'run deleted on request');
      return { id: run.id, deleted: true as const };
    },
  );
};
