// fal's wire schemas for FLUX.2 [klein] 4B (fal-ai/flux-2/klein/4b/edit and fal-ai/flux-2/klein/4b), built from
// the shared bounds. Strict: a field fal does not document here is a 422 naming it.
import { z } from 'zod';
import { INPUT_LIMITS, inputFields } from '../../runs/limits.ts';
import { IMAGE_SIZE_PRESETS, type ImageSizePreset } from '../../runs/sizes.ts';
import { FASTAPI_ERROR_JSON_SCHEMA } from '../fastapi-error.ts';

const PRESETS = Object.keys(IMAGE_SIZE_PRESETS) as [ImageSizePreset, ...ImageSizePreset[]];

export const FalImageSizeSchema = z.union([
  z.enum(PRESETS),
  z.strictObject({ width: inputFields.side(), height: inputFields.side() }),
]);

const common = {
  prompt: inputFields.prompt(),
  image_size: FalImageSizeSchema.optional().describe('preset (square_hd, landscape_16_9, ...) or {width, height}'),
  num_inference_steps: inputFields.steps().optional().describe("default: the checkpoint's (4 distilled, 50 base)"),
  num_images: inputFields.outputs().optional().describe('outputs of this one request, batched by the engine'),
  seed: inputFields.seed().optional(),
  output_format: inputFields.outputFormat().optional().describe('default png'),
  enable_safety_checker: z.boolean().optional().describe("false: skip the operator's safety checker (422 unless the server allows opting out)"),
  guidance_scale: inputFields.guidanceScale().optional().describe('base checkpoints only; a distilled checkpoint refuses anything but 1 (422)'),
  loras: inputFields.loras().optional().describe(`up to ${INPUT_LIMITS.maxLoras} LoRAs {path, scale}: HF repo id, URL or adapters-dir name`),
  sync_mode: z.boolean().optional().describe('outputs as data URIs; on the synchronous route nothing is kept once answered'),
  deterministic: inputFields.deterministic().optional(),
};

export const FalEditInputSchema = z
  .strictObject({
    ...common,
    image_urls: z
      .array(z.string().describe('http(s) URL or data: URI'))
      .min(1, 'needs at least 1 image')
      .max(INPUT_LIMITS.maxImages, `takes at most ${INPUT_LIMITS.maxImages} images`),
  })
  .meta({ id: 'FalEditInput' });
export const FalTextToImageInputSchema = z.strictObject(common).meta({ id: 'FalTextToImageInput' });
export type FalInput = z.infer<typeof FalEditInputSchema> | z.infer<typeof FalTextToImageInputSchema>;

export const FalSubmitQuerySchema = z.object({
  fal_webhook: z.url({ protocol: /^https?$/ }).max(2048).optional().describe('POSTed the result when the request ends'),
});

export const FalQueueStatusSchema = z.enum(['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED']);

export const FalSubmittedSchema = z
  .object({
    status: FalQueueStatusSchema,
    request_id: z.string(),
    response_url: z.string(),
    status_url: z.string(),
    cancel_url: z.string(),
    queue_position: z.int(),
  })
  .meta({ id: 'FalSubmitted' });

const LogSchema = z.object({ message: z.string(), level: z.string(), source: z.string(), timestamp: z.string() });

export const FalStatusSchema = z
  .object({
    status: FalQueueStatusSchema,
    request_id: z.string(),
    queue_position: z.int().optional(),
    response_url: z.string(),
    status_url: z.string(),
    cancel_url: z.string(),
    logs: z.array(LogSchema).nullable(),
    metrics: z.record(z.string(), z.number()).optional(),
  })
  .meta({ id: 'FalStatus' });

export const FalStatusQuerySchema = z.object({
  logs: z.enum(['0', '1', 'true', 'false']).optional().describe('1: include the run log lines'),
});

export const FalResultSchema = z
  .object({
    images: z.array(z.object({ url: z.string(), content_type: z.string(), width: z.int(), height: z.int() })),
    seed: z.number(),
    timings: z.record(z.string(), z.number()),
    has_nsfw_concepts: z.array(z.boolean()),
    prompt: z.string(),
  })
  .meta({ id: 'FalResult' });

export const FalRequestParamsSchema = z.object({ id: z.string().min(1).max(64) });

/** fal's cancel answer; the 400 (already completed) also carries the contract's error fields. */
export const FalCancelSchema = z.object({
  status: z.enum(['CANCELLATION_REQUESTED', 'ALREADY_COMPLETED']),
  detail: z.string().optional(),
  code: z.string().optional(),
  message: z.string().optional(),
  errors: z.array(z.object({ field: z.string(), reason: z.string() })).optional(),
});

/** What the client sends to start an upload of a Blob or File it found in an input (or fal.storage.upload). */
export const FalUploadInitiateSchema = z
  .strictObject({
    content_type: z
      .string()
      .regex(/^(image\/[a-z0-9.+-]+|application\/octet-stream)$/i, 'must be an image/* type (or application/octet-stream, for a Blob without a type)')
      .describe("the file's type; its bytes must be an image whatever it says"),
    file_name: z.string().trim().min(1).max(255),
  })
  .meta({ id: 'FalUploadInitiate' });

export const FalUploadQuerySchema = z.object({
  storage_type: z.string().max(64).optional().describe('accepted for the client (fal-cdn-v3); the bytes are kept on this server'),
});

export const FalUploadTargetSchema = z
  .object({
    upload_url: z.string().describe('PUT the bytes here, without a key; once, within 15 minutes'),
    file_url: z.string().describe('pass it as an image input; readable and usable only with the key that started the upload'),
  })
  .meta({ id: 'FalUploadTarget' });

/** fal's error body in OpenAPI: FastAPI's, since fal serves on FastAPI. */
export const FAL_ERROR_JSON_SCHEMA = FASTAPI_ERROR_JSON_SCHEMA;

export const JwksSchema = z
  .object({
    keys: z.array(
      z.object({
        kty: z.literal('OKP'),
        crv: z.literal('Ed25519'),
        x: z.string().describe('the public key, base64url'),
        kid: z.string().describe('RFC 7638 thumbprint of the key'),
        alg: z.literal('EdDSA'),
        use: z.literal('sig'),
      }),
    ),
  })
  .meta({ id: 'Jwks' });
