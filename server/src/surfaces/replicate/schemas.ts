// Replicate's wire schemas for black-forest-labs/flux-2-klein-4b, as the model's API page documents its input.
import { z } from 'zod';
import { INPUT_LIMITS, inputFields } from '../../runs/limits.ts';

export const MODEL = 'black-forest-labs/flux-2-klein-4b';
/** The model version Replicate lists for it; a create by version must name this one (or the model). */
export const VERSION = '8e9c42d77b10a2a41af823ac4500f7545be6ebc4e745830fc3f3de10de200542';
/** Replicate's own limit; this engine takes fewer references, so the rest are refused naming input.images. */
export const REPLICATE_MAX_IMAGES = 5;

export const WEBHOOK_EVENTS = ['start', 'output', 'logs', 'completed'] as const;
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number];

export const ReplicateInputSchema = z
  .strictObject({
    prompt: inputFields.prompt(),
    images: z
      .array(z.string().describe('http(s) URL, data: URI, or a Files API urls.get'))
      .max(REPLICATE_MAX_IMAGES, `takes at most ${REPLICATE_MAX_IMAGES} images`)
      .refine((a) => a.length <= INPUT_LIMITS.maxImages, {
        message: `this server's engine takes at most ${INPUT_LIMITS.maxImages} reference images; send ${INPUT_LIMITS.maxImages} or fewer`,
      })
      .optional(),
    aspect_ratio: z
      .string()
      .regex(/^(match_input_image|[1-9]\d?:[1-9]\d?)$/, 'use match_input_image or W:H (sides 1-99) such as 16:9')
      .optional()
      .describe('default 1:1; match_input_image follows the first image'),
    output_megapixels: z
      .union([z.number(), z.string().regex(/^\d+(\.\d+)?$/, 'a number of megapixels such as 1 or 0.25')])
      .transform(Number)
      .pipe(z.number().min(0.0625).max(4))
      .optional()
      .describe('output area, default 1'),
    output_format: z.enum(['jpg', 'png', 'webp']).optional().describe('default jpg'),
    output_quality: z.int().min(0).max(100).optional().describe('default 95; 0 is stored as 1, the lowest the encoder takes'),
    seed: inputFields.seed().optional(),
    go_fast: z.boolean().optional().describe('accepted; the engine always runs its fastest configuration'),
    disable_safety_checker: z.boolean().optional().describe("true: skip the operator's safety checker (422 unless the server allows opting out)"),
    loras: inputFields.loras().optional().describe(`up to ${INPUT_LIMITS.maxLoras} LoRAs {path, scale}: HF repo id, URL or adapters-dir name (a kleinserve extension)`),
    deterministic: inputFields.deterministic().optional(),
  })
  .superRefine((v, ctx) => {
    if (v.aspect_ratio === 'match_input_image' && !v.images?.length) {
      ctx.addIssue({ code: 'custom', path: ['aspect_ratio'], message: 'match_input_image needs at least one image in input.images' });
    }
  })
  .meta({ id: 'ReplicateInput' });
export type ReplicateInput = z.infer<typeof ReplicateInputSchema>;

const webhookFields = {
  webhook: z.url({ protocol: /^https?$/ }).max(2048).optional(),
  webhook_events_filter: z.array(z.enum(WEBHOOK_EVENTS)).min(1).optional().describe('default: output and completed'),
  stream: z.boolean().optional(),
};

export const ModelPredictionBodySchema = z.strictObject({ input: ReplicateInputSchema, ...webhookFields });
export const PredictionBodySchema = z.strictObject({
  version: z.string().describe(`${VERSION}, ${MODEL} or ${MODEL}:${VERSION}`),
  input: ReplicateInputSchema,
  ...webhookFields,
});
export type PredictionBody = z.infer<typeof ModelPredictionBodySchema>;

export const PREDICTION_STATUSES = ['starting', 'processing', 'succeeded', 'failed', 'canceled'] as const;

export const PredictionSchema = z
  .object({
    id: z.string(),
    model: z.string(),
    version: z.string(),
    input: z.record(z.string(), z.unknown()),
    logs: z.string(),
    output: z.array(z.string()).nullable(),
    data_removed: z.boolean(),
    error: z.string().nullable(),
    status: z.enum(PREDICTION_STATUSES),
    source: z.literal('api'),
    created_at: z.string(),
    started_at: z.string().nullable(),
    completed_at: z.string().nullable(),
    urls: z.object({ get: z.string(), cancel: z.string(), stream: z.string(), web: z.string() }),
    metrics: z.record(z.string(), z.number()),
  })
  .meta({ id: 'ReplicatePrediction' });

export const PredictionListSchema = z.object({
  previous: z.string().nullable(),
  next: z.string().nullable(),
  results: z.array(PredictionSchema),
});

export const PredictionParamsSchema = z.object({ id: z.string().min(1).max(64) });
export const StreamParamsSchema = z.object({ id: z.string().min(1).max(64), token: z.string().regex(/^[0-9a-f]{32}$/) });
export const ListQuerySchema = z.strictObject({ cursor: z.string().max(64).optional() });
export const PreferHeaderSchema = z.object({ prefer: z.string().optional().describe('wait or wait=N (1-60 s)') });

export const FileObjectSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    content_type: z.string(),
    size: z.int(),
    etag: z.string(),
    checksums: z.object({ sha256: z.string(), md5: z.string() }),
    metadata: z.record(z.string(), z.unknown()),
    created_at: z.string(),
    expires_at: z.string().nullable(),
    urls: z.object({ get: z.string() }),
  })
  .meta({ id: 'ReplicateFile' });

/** Replicate's error body in OpenAPI: {title, detail, status} (invalid_fields for input) and the contract's fields. */
export const REPLICATE_ERROR_JSON_SCHEMA = {
  type: 'object',
  required: ['title', 'detail', 'status', 'code', 'message', 'errors'],
  properties: {
    title: { type: 'string' },
    detail: { type: 'string' },
    status: { type: 'integer' },
    invalid_fields: { type: 'array', items: { type: 'object', properties: { type: { type: 'string' }, field: { type: 'string' }, description: { type: 'string' } } } },
    code: { type: 'string' },
    message: { type: 'string' },
    errors: { type: 'array', items: { type: 'object', required: ['field', 'reason'], properties: { field: { type: 'string' }, reason: { type: 'string' } } } },
  },
};
