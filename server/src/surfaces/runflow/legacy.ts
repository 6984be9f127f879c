// Runflow's flat legacy route, still shown on its model pages: POST /v1/run/{owner}/{model} with the inputs
// as the whole body, held until the run ends, answered as {images:[{url, ...}], seed, ...}.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { outputUrl } from '../../http/outputs.ts';
import { callerOf } from '../../http/auth.ts';
import { clientGone, idempotencyKeyHeader } from '../../http/request.ts';
import { endedWithoutOutput } from '../../runs/failure.ts';
import { DEFAULT_MODEL, editModelId, KLEIN_MODELS, pascalName } from '../../models/registry.ts';
import type { SurfaceDeps } from '../surface.ts';
import { toRunRequest } from './inputs.ts';
import { EditInputSchema, ErrorBodySchema, errorResponses, TextToImageInputSchema } from './schemas.ts';

const LegacyAnswerSchema = z.object({
  id: z.string(),
  images: z.array(z.object({ url: z.string(), content_type: z.string(), width: z.int(), height: z.int() })),
  seed: z.number(),
  prompt: z.string(),
  has_nsfw_concepts: z.array(z.boolean()),
  timings: z.record(z.string(), z.number()),
});

export const legacyRoutes: FastifyPluginAsyncZod<SurfaceDeps> = async (app, { runs, baseUrl }) => {
  // Every family member's pair, from the registry (the 4B's operation ids come from the OpenAPI table).
  const routes = KLEIN_MODELS.flatMap((m) => {
    const suffix = m.id === DEFAULT_MODEL ? null : pascalName(m);
    return [
      { path: `/v1/run/${editModelId(m.id)}`, model: editModelId(m.id), body: EditInputSchema, operationId: suffix && `runEdit${suffix}` },
      { path: `/v1/run/${m.id}`, model: m.id, body: TextToImageInputSchema, operationId: suffix && `runTextToImage${suffix}` },
    ];
  });
  for (const route of routes) {
    app.post(
      route.path,
      {
        config: { createsRun: true },
        schema: {
          ...(route.operationId ? { operationId: route.operationId } : {}),
          summary: "Runflow's flat route: the inputs are the body; answers when the run ends",
          tags: ['runs'],
          body: route.body,
          // 504: still running at the wait cap; the body names the run to read instead.
          response: { 200: LegacyAnswerSchema, ...errorResponses, 504: ErrorBodySchema },
        },
      },
      async (req, reply) => {
        const request = toRunRequest(route.model, { input: req.body as never });
        const { run: created } = await runs.submit(callerOf(req), request, { idempotencyKey: idempotencyKeyHeader(req) });
        const run = await runs.await(created, runs.waitCapSeconds, clientGone(reply));
        if (run.status !== 'succeeded' || !run.output) throw endedWithoutOutput(run);
        return {
          id: run.id,
          images: run.output.images.map((img) => ({ url: outputUrl(baseUrl(), img.key), content_type: img.content_type, width: img.width, height: img.height })),
          seed: run.output.seed,
          prompt: run.input.prompt,
          has_nsfw_concepts: run.output.images.map((img) => img.nsfw === true),
          timings: run.output.timing as Record<string, number>,
        };
      },
    );
  }
};
