// OpenAI-compatible image routes, as SGLang and vLLM-Omni serve them, so the official `openai` SDK works:
//   POST /v1/images/edits        multipart: image / image[] files, url / url[], prompt, n, size, response_format, ...
//   POST /v1/images/generations  JSON: prompt, n, size, response_format, output_format, seed, num_inference_steps
// Each request is ONE run with num_images = n (the engine batches the outputs) held open until it ends.
// Errors carry both shapes: OpenAI's {error:{message,type,code,param}} (what its SDK reads) and the contract's fields.
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { fieldPath } from '../plugins/errors.ts';
import { toRunObject } from '../runs/run-object.ts';
import type { RunRecord } from '../runs/types.ts';
import { ApiError, validationError, type FieldError } from './errors.ts';
import { MODEL_EDIT } from './runs.schemas.ts';
import { clientGone, MODEL_TEXT_TO_IMAGE, outputBytes, submitRun, waitFor, type SubmitDeps } from './submit-run.ts';


const OpenAiParamsSchema = z.strictObject({
  prompt: z.string().trim().min(1, 'must not be empty').max(20_000),
  n: z.coerce.number().int().min(1).max(4).optional(),
  size: z
    .string()
    .regex(/^(auto|\d{2,4}x\d{2,4})$/, 'use WxH (e.g. 1024x1024) or auto')
    .optional(),
  response_format: z.enum(['b64_json', 'url']).optional(),
  output_format: z.enum(['jpeg', 'png', 'webp']).optional(),
  output_compression: z.coerce.number().int().min(1).max(100).optional(),
  seed: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  num_inference_steps: z.coerce.number().int().min(1).max(50).optional(),
  // Sent by the openai SDK and by habit; accepted and not used (there is one model here).
  model: z.string().optional(),
  user: z.string().optional(),
  quality: z.string().optional(),
  style: z.string().optional(),
});
type OpenAiParams = z.infer<typeof OpenAiParamsSchema>;

function parseParams(raw: Record<string, unknown>): OpenAiParams {
  const r = OpenAiParamsSchema.safeParse(raw);
  if (r.success) return r.data;
  const errors: FieldError[] = r.error.issues.flatMap((i) =>
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => ({ field: k, reason: 'unknown field' }))
      : [{ field: fieldPath(i.path.map(String)), reason: i.message }],
  );
  throw validationError(errors);
}

function sizeOf(size: string | undefined): { width?: number; height?: number } {
  if (!size || size === 'auto') return {};
  const [width, height] = size.split('x').map(Number);
  const bad = [width, height].some((d) => d % 16 !== 0 || d < 64 || d > 4096);
  if (bad) throw validationError([{ field: 'size', reason: `${size}: both sides must be multiples of 16 between 64 and 4096` }]);
  return { width, height };
}

function runInput(p: OpenAiParams, image_urls: string[]) {
  return {
    prompt: p.prompt,
    image_urls,
    ...sizeOf(p.size),
    ...(p.seed !== undefined ? { seed: p.seed } : {}),
    ...(p.num_inference_steps !== undefined ? { steps: p.num_inference_steps } : {}),
    ...(p.n !== undefined ? { num_images: p.n } : {}),
    ...(p.output_format ? { output_format: p.output_format } : {}),
    ...(p.output_compression !== undefined ? { output_quality: p.output_compression } : {}),
  };
}

/** Reads the multipart body: image files become data URIs in order, url fields stay URLs, the rest are params. */
async function readEditForm(req: FastifyRequest): Promise<{ params: Record<string, unknown>; images: string[] }> {
  const params: Record<string, unknown> = {};
  const images: string[] = [];
  try {
    await readParts(req, params, images);
  } catch (err) {
    // A malformed body (no boundary, truncated part) is the client's error: 400, never a 500 (found by schemathesis).
    if (err instanceof ApiError || (err as { statusCode?: number }).statusCode) throw err;
    throw new ApiError(400, 'BAD_REQUEST', `malformed multipart body: ${(err as Error).message}`);
  }
  return { params, images };
}

async function readParts(req: FastifyRequest, params: Record<string, unknown>, images: string[]): Promise<void> {
  for await (const part of req.parts()) {
    const name = part.fieldname.replace(/\[\]$/, '');
    if (part.type === 'file') {
      const bytes = await part.toBuffer();
      if (name === 'mask') throw validationError([{ field: 'mask', reason: 'masks are not supported; describe the edit in the prompt' }]);
      if (name !== 'image') throw validationError([{ field: part.fieldname, reason: 'unknown file field; send images as image or image[]' }]);
      const mime = part.mimetype?.startsWith('image/') ? part.mimetype : 'application/octet-stream';
      images.push(`data:${mime};base64,${bytes.toString('base64')}`);
    } else if (name === 'url') {
      images.push(String(part.value));
    } else {
      params[name] = part.value;
    }
  }
}

async function answer(deps: SubmitDeps, req: FastifyRequest, reply: FastifyReply, created: RunRecord, format: 'b64_json' | 'url') {
  const run = await waitFor(deps, created, Math.max(deps.waitCapSeconds, 300), clientGone(req.raw));
  if (run.status !== 'succeeded') {
    if (run.status === 'failed') {
      const status = run.failure_code === 'INPUT_VALIDATION_FAILED' || run.failure_code === 'IMAGE_FETCH_FAILED' ? 422 : run.failure_code === 'MODEL_UNAVAILABLE' ? 503 : 500;
      throw new ApiError(status, run.failure_code ?? 'RUN_FAILED', run.failure_message ?? 'the run failed');
    }
    throw new ApiError(run.status === 'canceled' ? 409 : 504, run.status === 'canceled' ? 'RUN_CANCELED' : 'TIMEOUT', `run ${run.id} is ${run.status}`);
  }
  const out = run.output!;
  const data =
    format === 'url'
      ? toRunObject(run, deps.baseUrl()).output!.outputs.map((o) => ({ url: o.url }))
      : (await outputBytes(deps, run)).map((b) => ({ b64_json: b.toString('base64') }));
  const first = out.images[0];
  return reply.header('x-kleinserve-run-id', run.id).send({
    created: Math.floor(run.created_at / 1000),
    data,
    output_format: first?.content_type.split('/')[1],
    size: first ? `${first.width}x${first.height}` : undefined,
    seed: out.seed,
    timings: out.timing,
  });
}

/** OpenAI's SDK reads `error.message`; contract clients read `code`/`message`/`errors`. Send both. */
function openAiErrorBody(err: ApiError) {
  const type = err.statusCode >= 500 ? 'server_error' : 'invalid_request_error';
  return {
    code: err.code,
    message: err.message,
    errors: err.errors,
    error: { message: err.message, type, code: err.code, param: err.errors[0]?.field ?? null },
  };
}

/** Intake names fields after the run input; name them after what the OpenAI caller sent. */
function renameFields(err: unknown): unknown {
  if (!(err instanceof ApiError) || err.errors.length === 0) return err;
  const rename = (f: string) => f.replace(/^input\.image_urls\[(\d+)\]/, 'image[$1]').replace(/^input\.steps$/, 'num_inference_steps').replace(/^input\.num_images$/, 'n').replace(/^input\./, '');
  const errors = err.errors.map((e) => ({ ...e, field: rename(e.field) }));
  return new ApiError(err.statusCode, err.code, errors.map((e) => `${e.field}: ${e.reason}`).join('; '), errors, err.headers);
}

export async function openAiImagesRoutes(app: FastifyInstance, deps: SubmitDeps): Promise<void> {
  // files: 8 so that a 5th-8th image gets the field-naming 422 below rather than a bare 413.
  await app.register(multipart, { limits: { fileSize: 32 * 1024 * 1024, files: 8, fields: 32, parts: 48 } });
  const parent = app.errorHandler;
  app.setErrorHandler(function (err, req, reply) {
    if (err instanceof ApiError) return reply.headers(err.headers).code(err.statusCode).send(openAiErrorBody(err));
    return parent.call(this, err, req, reply);
  });

  app.post('/v1/images/edits', { schema: { summary: 'OpenAI-compatible image edit (multipart)', tags: ['openai'] } }, async (req, reply) => {
    if (!req.isMultipart()) throw new ApiError(415, 'UNSUPPORTED_MEDIA_TYPE', 'send multipart/form-data with image or image[] files');
    const { params, images } = await readEditForm(req);
    const p = parseParams(params);
    if (images.length === 0) throw validationError([{ field: 'image', reason: 'give 1-4 images as image/image[] files or url/url[]' }]);
    if (images.length > 4) throw validationError([{ field: 'image', reason: `takes at most 4 images, got ${images.length}` }]);
    const run = await submitRun(deps, req, MODEL_EDIT, { input: runInput(p, images) as never }).catch((e) => { throw renameFields(e); });
    return answer(deps, req, reply, run, p.response_format ?? 'b64_json');
  });

  app.post('/v1/images/generations', { schema: { summary: 'OpenAI-compatible text-to-image', tags: ['openai'] } }, async (req, reply) => {
    const p = parseParams((req.body ?? {}) as Record<string, unknown>);
    const run = await submitRun(deps, req, MODEL_TEXT_TO_IMAGE, { input: runInput(p, []) as never }).catch((e) => { throw renameFields(e); });
    return answer(deps, req, reply, run, p.response_format ?? 'b64_json');
  });
}
