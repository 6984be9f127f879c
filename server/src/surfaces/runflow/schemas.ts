// Runflow's wire schemas. The same zod objects validate requests and generate /openapi.json. The input
// also takes fal/Replicate-style fields (input-aliases.ts); inputs.ts turns a body into the canonical request.
import { z } from 'zod';
import { editModelId, KLEIN_MODELS, modelOfRun } from '../../models/registry.ts';
import { INPUT_LIMITS, inputFields } from '../../runs/limits.ts';
import { RUN_STATUSES } from '../../runs/types.ts';
import { ALIAS_FIELDS, ImageSizeSchema } from './input-aliases.ts';
import { decodePageToken } from './page-token.ts';

/**
 * Model ids a run route accepts (every family member's edit and text-to-image ids, in full and without the
 * owner), with the canonical run model_id each maps to: `.../edit` ids are edit runs, the others text-to-image.
 */
export const MODEL_ALIASES: Record<string, string> = Object.fromEntries(
  KLEIN_MODELS.flatMap((m) => [
    [editModelId(m.id), editModelId(m.id)],
    [editModelId(m.short), editModelId(m.id)],
    [m.id, m.id],
    [m.short, m.id],
  ]),
);

/** Whether a run model_id is an edit run's (references required) rather than text-to-image. */
export const isEditModelId = (runModelId: string): boolean => runModelId !== modelOfRun(runModelId);

export const EditInputSchema = z
  .strictObject({
    prompt: inputFields.prompt(),
    image_urls: z
      .array(z.string().describe('http(s) URL, data:image/...;base64 URI, or raw base64'))
      .min(1, 'needs at least 1 image')
      .max(INPUT_LIMITS.maxImages, `takes at most ${INPUT_LIMITS.maxImages} images`),
    seed: inputFields.seed().optional().describe('random when absent; the run reports it'),
    steps: inputFields.steps().optional().describe('denoising steps; default: the checkpoint\'s (4 distilled, 50 base), at most its max_steps'),
    output_format: inputFields.outputFormat().optional().describe('default jpeg'),
    output_quality: inputFields.outputQuality().optional().describe(`JPEG/WebP quality, default ${INPUT_LIMITS.defaultOutputQuality}`),
    width: inputFields.side().optional(),
    height: inputFields.side().optional(),
    image_size: ImageSizeSchema.optional().describe('fal preset (square_hd, landscape_16_9, ...) or {width,height}'),
    deterministic: inputFields.deterministic().optional(),
    ...ALIAS_FIELDS,
  })
  .superRefine((v, ctx) => {
    if ((v.width === undefined) !== (v.height === undefined)) {
      ctx.addIssue({ code: 'custom', path: [v.width === undefined ? 'width' : 'height'], message: 'width and height go together: give both or neither' });
    }
    if (v.image_size && v.width !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['image_size'], message: 'give image_size or width/height, not both' });
    }
  });

export type EditInputBody = z.infer<typeof EditInputSchema>;

export const CreateRunBodySchema = z.object({
  input: EditInputSchema,
  callback_url: z.url({ protocol: /^https?$/ }).max(2048).nullable().optional(),
  metadata: z
    .record(z.string(), z.unknown())
    .nullable()
    .optional()
    .refine((m) => m == null || JSON.stringify(m).length <= 16_384, 'metadata must be at most 16 KiB of JSON'),
  client_ref: z.string().max(256).nullable().optional(),
});
export type CreateRunBody = z.infer<typeof CreateRunBodySchema>;

/** Text-to-image: the edit input without references. */
export const TextToImageInputSchema = z
  .strictObject({
    prompt: inputFields.prompt(),
    seed: inputFields.seed().optional(),
    steps: inputFields.steps().optional(),
    output_format: inputFields.outputFormat().optional(),
    output_quality: inputFields.outputQuality().optional(),
    width: inputFields.side().optional(),
    height: inputFields.side().optional(),
    image_size: ImageSizeSchema.optional(),
    deterministic: inputFields.deterministic().optional(),
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
export type TextToImageInput = z.infer<typeof TextToImageInputSchema>;

export const TextToImageBodySchema = CreateRunBodySchema.extend({ input: TextToImageInputSchema });
export type TextToImageBody = z.infer<typeof TextToImageBodySchema>;

export const PreferHeaderSchema = z.object({
  prefer: z.string().optional().describe('`wait` or `wait=N` (seconds): hold the request until the run is terminal'),
});

export const RunIdParamsSchema = z.object({ id: z.string().min(1).max(64) });

export const LIST_LIMIT_MAX = 500;

/** Strict: a parameter the route does not know is a 422 naming it, not silently dropped. */
export const ListRunsQuerySchema = z.strictObject({
  limit: z.coerce.number().int().min(1).max(LIST_LIMIT_MAX).default(20),
  pq: z
    .string()
    .max(256)
    .optional()
    .describe('page token: next_pq or prev_pq of an earlier answer')
    .transform((s, ctx) => {
      if (s === undefined) return undefined;
      const token = decodePageToken(s);
      if (!token) {
        ctx.addIssue({ code: 'custom', message: 'not a page token; pass next_pq or prev_pq from an earlier answer' });
        return z.NEVER;
      }
      return token;
    }),
  status: z
    .string()
    // The pattern puts the allowed values in the OpenAPI document, so clients (and fuzzers) can know them.
    .regex(new RegExp(`^((${RUN_STATUSES.join('|')})(, *(${RUN_STATUSES.join('|')}))*)?$`), {
      message: `unknown status; use a comma-separated list of ${RUN_STATUSES.join(', ')}`,
    })
    .optional()
    .describe('comma-separated statuses')
    .transform((s, ctx) => {
      if (!s) return undefined;
      const list = s.split(',').map((x) => x.trim());
      for (const x of list) {
        if (!(RUN_STATUSES as readonly string[]).includes(x)) {
          ctx.addIssue({ code: 'custom', message: `unknown status ${JSON.stringify(x)}; use ${RUN_STATUSES.join(', ')}` });
          return z.NEVER;
        }
      }
      return list as (typeof RUN_STATUSES)[number][];
    }),
});

const OutputImageSchema = z.object({
  url: z.string(),
  type: z.literal('image'),
  content_type: z.string(),
  width: z.int(),
  height: z.int(),
});

export const RunObjectSchema = z
  .object({
    id: z.string(),
    status_code: z.enum(RUN_STATUSES),
    model_id: z.string(),
    input: z.record(z.string(), z.unknown()),
    output: z
      .object({
        outputs: z.array(OutputImageSchema),
        seed: z.number(),
        timing: z.record(z.string(), z.number()),
        nsfw_detected: z
          .boolean()
          .describe('the operator\'s safety checker (--safety-checker) flagged an output; always false when the server runs no checker, because nothing is checked'),
      })
      .nullable(),
    metadata: z.record(z.string(), z.unknown()).nullable(),
    client_ref: z.string().nullable(),
    callback_url: z.string().nullable(),
    created_at: z.string(),
    started_at: z.string().nullable(),
    completed_at: z.string().nullable(),
    duration_ms: z.number().nullable(),
    cost: z.number(),
    failure_code: z.string().nullable(),
    failure_message: z.string().nullable(),
    failure_stage_code: z.string().nullable(),
    error: z
      .object({
        code: z.string(),
        message: z.string(),
        field: z.string().optional().describe('the request field a late refusal names (e.g. input.loras[0].path)'),
        reason: z.string().optional(),
      })
      .nullable(),
    links: z.record(z.string(), z.string()),
  })
  .meta({ id: 'Run' });

export const RunListSchema = z.object({
  items: z.array(RunObjectSchema),
  next_pq: z.string().nullable().describe('pq of the next (older) page, null on the last'),
  prev_pq: z.string().nullable().describe('pq of the previous (newer) page, null on the first'),
});

export const ErrorBodySchema = z
  .object({
    code: z.string(),
    message: z.string(),
    errors: z.array(z.object({ field: z.string(), reason: z.string() })),
  })
  .meta({ id: 'Error' });

export const errorResponses = {
  400: ErrorBodySchema,
  401: ErrorBodySchema,
  404: ErrorBodySchema,
  422: ErrorBodySchema,
  503: ErrorBodySchema,
};
