// BFL's wire schemas for POST /v1/flux-2-klein-4b and its polling route.
import { z } from 'zod';
import { INPUT_LIMITS, inputFields } from '../../runs/limits.ts';
import { FASTAPI_ERROR_JSON_SCHEMA } from '../fastapi-error.ts';

const image = () => z.string().max(40_000_000).describe('http(s) URL, data: URI or raw base64');

export const BflRequestSchema = z
  .strictObject({
    prompt: inputFields.prompt(),
    input_image: image().optional(),
    input_image_2: image().optional(),
    input_image_3: image().optional(),
    input_image_4: image().optional(),
    seed: inputFields.seed().optional(),
    width: inputFields.side().optional(),
    height: inputFields.side().optional(),
    output_format: z.enum(['jpeg', 'png', 'webp']).optional().describe('default jpeg'),
    safety_tolerance: z.int().min(0).max(6).optional().describe("accepted; output checking is the operator's engine setting"),
    webhook_url: z.url({ protocol: /^https?$/ }).max(2048).optional(),
    webhook_secret: z.string().min(1).max(256).optional().describe('signs the webhook: X-BFL-Signature: sha256=<hex HMAC-SHA256 of the body>'),
    loras: inputFields.loras().optional().describe(`up to ${INPUT_LIMITS.maxLoras} LoRAs {path, scale}: HF repo id, URL or adapters-dir name (a kleinserve extension)`),
    deterministic: inputFields.deterministic().optional(),
  })
  .superRefine((v, ctx) => {
    if ((v.width === undefined) !== (v.height === undefined)) {
      ctx.addIssue({ code: 'custom', path: [v.width === undefined ? 'width' : 'height'], message: 'width and height go together: give both or neither' });
    }
    const images = [v.input_image, v.input_image_2, v.input_image_3, v.input_image_4];
    const gap = images.findIndex((x, i) => x !== undefined && images.slice(0, i).some((y) => y === undefined));
    if (gap > 0) ctx.addIssue({ code: 'custom', path: [`input_image_${gap + 1}`], message: 'give the images in order: input_image first, then input_image_2, ...' });
    if (v.webhook_secret && !v.webhook_url) ctx.addIssue({ code: 'custom', path: ['webhook_secret'], message: 'needs webhook_url' });
  })
  .meta({ id: 'BflRequest' });
export type BflRequest = z.infer<typeof BflRequestSchema>;

export const BflSubmittedSchema = z.object({ id: z.string(), polling_url: z.string() }).meta({ id: 'BflSubmitted' });

export const BFL_STATUSES = ['Task not found', 'Pending', 'Ready', 'Error'] as const;

export const BflResultSchema = z
  .object({
    id: z.string(),
    status: z.enum(BFL_STATUSES),
    result: z
      .object({ sample: z.string(), prompt: z.string(), seed: z.number(), start_time: z.number().nullable(), end_time: z.number().nullable(), duration: z.number().nullable() })
      .nullable(),
    progress: z.number().nullable(),
    details: z.record(z.string(), z.unknown()).nullable(),
  })
  .meta({ id: 'BflResult' });

export const BflResultQuerySchema = z.object({ id: z.string().min(1).max(64) });

/** BFL's error body in OpenAPI: FastAPI's, since BFL serves on FastAPI. */
export const BFL_ERROR_JSON_SCHEMA = FASTAPI_ERROR_JSON_SCHEMA;
