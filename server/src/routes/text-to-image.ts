// POST /v1/models/black-forest-labs/flux-2-klein-4b/runs — text-to-image on the same run lifecycle as edits.
// No references: the engine's zero-image path, 1024x1024 unless a size is given. Same run object, Prefer: wait,
// callbacks and client_ref as the edit route; the fal/Replicate aliases apply here too.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { toRunObject } from '../runs/run-object.ts';
import { parsePreferWait } from '../runs/wait.ts';
import { ALIAS_FIELDS, ImageSizeSchema } from './input-aliases.ts';
import { CreateRunBodySchema, type CreateRunBody, errorResponses, PreferHeaderSchema, RunObjectSchema } from './runs.schemas.ts';
import { clientGone, MODEL_TEXT_TO_IMAGE, runObjectWithDataUris, submitRun, waitFor, type SubmitDeps } from './submit-run.ts';

const dimension = z.int().min(64).max(4096).multipleOf(16);

export const TextToImageInputSchema = z
  .strictObject({
    prompt: z.string().trim().min(1, 'must not be empty').max(20_000),
    seed: z.int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
    steps: z.int().min(1).max(50).optional(),
    output_format: z.enum(['jpeg', 'png', 'webp']).optional(),
    output_quality: z.int().min(1).max(100).optional(),
    width: dimension.optional(),
    height: dimension.optional(),
    image_size: ImageSizeSchema.optional(),
    ...ALIAS_FIELDS,
  })
  .superRefine((v, ctx) => {
    if ((v.width === undefined) !== (v.height === undefined)) {
      ctx.addIssue({ code: 'custom', path: [v.width === undefined ? 'width' : 'height'], message: 'width and height go together: give both or neither' });
    }
    if (v.aspect_ratio === 'match_input_image') {
      ctx.addIssue({ code: 'custom', path: ['aspect_ratio'], message: 'match_input_image needs an input image; use W:H here' });
    }
  });

const BodySchema = CreateRunBodySchema.extend({ input: TextToImageInputSchema });

export async function textToImageRoutes(app: FastifyInstance, deps: SubmitDeps): Promise<void> {
  const handler = async (req: FastifyRequest<{ Body: z.infer<typeof BodySchema> }>) => {
    const body = { ...req.body, input: { ...req.body.input, image_urls: [] } };
    const created = await submitRun(deps, req, MODEL_TEXT_TO_IMAGE, body as unknown as CreateRunBody);
    const sync = req.body.input.sync_mode === true;
    const wait = sync ? deps.waitCapSeconds : parsePreferWait(req.headers.prefer, deps.waitCapSeconds);
    const run = wait === null ? created : await waitFor(deps, created, wait, clientGone(req.raw));
    return sync ? runObjectWithDataUris(deps, run) : toRunObject(run, deps.baseUrl());
  };
  const schema = {
    summary: 'Create a text-to-image run',
    tags: ['runs'],
    body: BodySchema,
    headers: PreferHeaderSchema,
    response: { 200: RunObjectSchema, ...errorResponses },
  };
  const typed = app.withTypeProvider<ZodTypeProvider>();
  typed.post('/v1/models/black-forest-labs/flux-2-klein-4b/runs', { schema }, (req) => handler(req));
  typed.post('/v1/models/flux-2-klein-4b/runs', { schema: { ...schema, hide: true } }, (req) => handler(req));
}
