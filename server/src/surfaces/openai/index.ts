// OpenAI-compatible routes, as SGLang and vLLM-Omni serve them, so the official `openai` SDK works:
//   GET  /v1/models, /v1/models/{id}  the models served (what OpenAI clients probe first)
//   POST /v1/images/edits        multipart: image / image[] files, url / url[], prompt, n, size, response_format, ...
//   POST /v1/images/generations  JSON: prompt, n, size, response_format, output_format, seed, num_inference_steps
// Each request is ONE run with num_images = n (the engine batches the outputs) held open until it ends.
// Errors carry both shapes: OpenAI's {error:{message,type,code,param}} (what its SDK reads) and the contract's fields.
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { invalidInput, ServiceError, type FieldError } from '../../errors.ts';
import { callerOf } from '../../http/auth.ts';
import { noRouteMessage } from '../../http/framework-errors.ts';
import type { RouteDocs } from '../../http/openapi.ts';
import { clientGone, idempotencyKeyHeader } from '../../http/request.ts';
import { limitUpload } from '../../http/upload-limit.ts';
import { errorHeaders, STATUS_OF } from '../../http/status.ts';
import { INPUT_LIMITS, sideProblem } from '../../runs/limits.ts';
import { MODEL_EDIT, MODEL_TEXT_TO_IMAGE, type RunRequest } from '../../runs/inputs.ts';
import { endedWithoutOutput } from '../../runs/failure.ts';
import type { RunRecord } from '../../runs/types.ts';
import { outputUrl } from '../../http/outputs.ts';
import type { SurfaceDeps } from '../surface.ts';
import {
  ImagesResponseSchema,
  ModelListSchema,
  ModelParamsSchema,
  ModelSchema,
  OPENAI_ERROR_JSON_SCHEMA,
  OpenAiParamsSchema,
  openAiParamsJsonSchema,
  type OpenAiParams,
} from './schemas.ts';
import { fieldPath } from '../../plugins/errors.ts';

function parseParams(raw: Record<string, unknown>): OpenAiParams {
  const r = OpenAiParamsSchema.safeParse(raw);
  if (r.success) return r.data;
  const errors: FieldError[] = r.error.issues.flatMap((i) =>
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => ({ field: k, reason: 'unknown field' }))
      : [{ field: fieldPath(i.path.map(String)), reason: i.message }],
  );
  throw invalidInput(errors);
}

function sizeOf(size: string | undefined): { width?: number; height?: number } {
  if (!size || size === 'auto') return {};
  const [width, height] = size.split('x').map(Number);
  const problem = sideProblem(width, height);
  if (problem) throw invalidInput([{ field: 'size', reason: `${size}: ${problem}` }]);
  return { width, height };
}

function toRunRequest(modelId: string, p: OpenAiParams, images: string[]): RunRequest {
  const size = sizeOf(p.size);
  return {
    model_id: modelId,
    input: {
      prompt: p.prompt,
      images,
      seed: p.seed,
      steps: p.num_inference_steps,
      output_format: p.output_format ?? 'jpeg',
      output_quality: p.output_compression ?? INPUT_LIMITS.defaultOutputQuality,
      width: size.width ?? null,
      height: size.height ?? null,
      num_images: p.n ?? 1,
      ...(p.guidance_scale !== undefined ? { guidance_scale: p.guidance_scale } : {}),
      ...(p.negative_prompt ? { negative_prompt: p.negative_prompt } : {}),
      ...(p.loras?.length ? { loras: p.loras } : {}),
      ...(p.deterministic ? { deterministic: true } : {}),
    },
    callback_url: null,
    metadata: null,
    client_ref: null,
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
    // @fastify/multipart answers a part declared JSON that does not parse with 406; it is a malformed body too.
    const status = (err as { statusCode?: number }).statusCode;
    if (err instanceof ServiceError || (status && status !== 406)) throw err;
    throw new ServiceError('bad_request', 'BAD_REQUEST', `malformed multipart body: ${(err as Error).message}`);
  }
  return { params, images };
}

async function readMultipart(req: FastifyRequest, reply: FastifyReply): Promise<{ params: Record<string, unknown>; images: string[] }> {
  // The JSON body limit holds for the stream too: 413 as soon as it is crossed, never read whole.
  const limit = limitUpload(req, reply);
  return Promise.race([readEditForm(req), limit.exceeded]).finally(limit.stop);
}

const isJsonObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v);

/** The JSON form of images.edit: `images: [{image_url}]` (a URL or a data: URI each), the other fields as in multipart. */
function readEditJson(body: Record<string, unknown>): { params: Record<string, unknown>; images: string[] } {
  const { images, mask, ...params } = body;
  if (mask !== undefined) throw invalidInput([{ field: 'mask', reason: 'masks are not supported; describe the edit in the prompt' }]);
  if (!Array.isArray(images)) throw invalidInput([{ field: 'images', reason: 'give an array of {image_url} objects' }]);
  const urls = images.map((img, i) => {
    const field = `images[${i}]`;
    if (!isJsonObject(img)) throw invalidInput([{ field, reason: 'must be an object {image_url}' }]);
    if (img.file_id !== undefined) throw invalidInput([{ field: `${field}.file_id`, reason: 'file ids are not supported here; give image_url (a URL or a data: URI)' }]);
    if (typeof img.image_url !== 'string' || !img.image_url) throw invalidInput([{ field: `${field}.image_url`, reason: 'required: a URL or a data: URI' }]);
    const unknown = Object.keys(img).filter((k) => k !== 'image_url');
    if (unknown.length) throw invalidInput(unknown.map((k) => ({ field: `${field}.${k}`, reason: 'unknown field' })));
    return img.image_url;
  });
  return { params, images: urls };
}

async function readParts(req: FastifyRequest, params: Record<string, unknown>, images: string[]): Promise<void> {
  for await (const part of req.parts()) {
    const name = part.fieldname.replace(/\[\]$/, '');
    if (part.type === 'file') {
      const bytes = await part.toBuffer();
      if (name === 'mask') throw invalidInput([{ field: 'mask', reason: 'masks are not supported; describe the edit in the prompt' }]);
      if (name !== 'image') throw invalidInput([{ field: part.fieldname, reason: 'unknown file field; send images as image or image[]' }]);
      const mime = part.mimetype?.startsWith('image/') ? part.mimetype : 'application/octet-stream';
      images.push(`data:${mime};base64,${bytes.toString('base64')}`);
    } else if (name === 'url') {
      images.push(String(part.value));
    } else {
      params[name] = part.value;
    }
  }
}

async function answer(deps: SurfaceDeps, reply: FastifyReply, created: RunRecord, format: 'b64_json' | 'url') {
  const { runs } = deps;
  const run = await runs.awaitEnd(created, Math.max(runs.waitCapSeconds, 300), clientGone(reply));
  if (run.status !== 'succeeded') throw endedWithoutOutput(run);
  const out = run.output!;
  const data =
    format === 'url'
      ? out.images.map((img) => ({ url: outputUrl(deps.baseUrl(), img.key) }))
      : (await runs.outputBytes(run)).map((b) => ({ b64_json: b.toString('base64') }));
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
function openAiErrorBody(err: ServiceError) {
  return withOpenAiError(STATUS_OF[err.kind], { code: err.code, message: err.message, errors: err.errors });
}

type ContractError = { code: string; message: string; errors?: { field: string; reason: string }[] };

function withOpenAiError(status: number, body: ContractError) {
  const type = status >= 500 ? 'server_error' : 'invalid_request_error';
  return { ...body, error: { message: body.message, type, code: body.code, param: body.errors?.[0]?.field ?? null } };
}

/** Every error body these routes send (the framework's 400/413/415, a 404 under /v1/images) gets OpenAI's `error` too. */
function addOpenAiError(reply: FastifyReply, payload: unknown): unknown {
  if (reply.statusCode < 400 || typeof payload !== 'string' || !payload.startsWith('{')) return payload;
  try {
    const body = JSON.parse(payload);
    if (body.error || typeof body.code !== 'string' || typeof body.message !== 'string') return payload;
    return JSON.stringify(withOpenAiError(reply.statusCode, body));
  } catch {
    return payload;
  }
}

// The server's start stands in for `created`: the model object describes what this server serves.
const STARTED = Math.floor(Date.now() / 1000);
const MODELS = [MODEL_EDIT, MODEL_TEXT_TO_IMAGE].map((id) => ({ id, object: 'model' as const, created: STARTED, owned_by: id.split('/')[0] }));

/** Intake names fields after the run input; name them after what the OpenAI caller sent. */
function renameFields(err: unknown, imageField = 'image[$1]'): unknown {
  if (!(err instanceof ServiceError) || err.errors.length === 0) return err;
  const rename = (f: string) => f.replace(/^input\.image_urls\[(\d+)\]/, imageField).replace(/^input\.steps$/, 'num_inference_steps').replace(/^input\.num_images$/, 'n').replace(/^input\./, '');
  const errors = err.errors.map((e) => ({ ...e, field: rename(e.field) }));
  return new ServiceError(err.kind, err.code, errors.map((e) => `${e.field}: ${e.reason}`).join('; '), errors, err.retryAfterSeconds);
}

export async function openAiSurface(app: FastifyInstance, deps: SurfaceDeps): Promise<void> {
  // files: 8 so that a 5th-8th image gets the field-naming 422 below rather than a bare 413.
  await app.register(multipart, { limits: { fileSize: 32 * 1024 * 1024, files: 8, fields: 32, parts: 48 } });
  const parent = app.errorHandler;
  app.setErrorHandler(function (err, req, reply) {
    if (err instanceof ServiceError) return reply.headers(errorHeaders(err)).code(STATUS_OF[err.kind]).send(openAiErrorBody(err));
    return parent.call(this, err, req, reply);
  });
  app.addHook('onSend', async (_req, reply, payload) => addOpenAiError(reply, payload));
  await app.register(
    async (images) => {
      images.setNotFoundHandler((req, reply) => {
        reply.code(404).send({ code: 'NOT_FOUND', message: noRouteMessage(req), errors: [] });
      });
    },
    { prefix: '/v1/images' },
  );
  const docs = (extra: RouteDocs): RouteDocs => ({ errorSchema: OPENAI_ERROR_JSON_SCHEMA, ...extra });

  app.get(
    '/v1/models',
    {
      schema: { summary: 'List models (OpenAI-compatible)', tags: ['openai'], response: { 200: ModelListSchema } },
      config: { docs: docs({ operationId: 'listModels', description: "The models this server serves, in OpenAI's shape (what OpenAI clients probe first).", ok: 'The models' }) },
    },
    async () => ({ object: 'list' as const, data: MODELS }),
  );
  app.get(
    '/v1/models/:model',
    {
      schema: { summary: 'Read a model (OpenAI-compatible)', tags: ['openai'], params: ModelParamsSchema, response: { 200: ModelSchema } },
      config: { docs: docs({ operationId: 'getModel', description: 'One model by id (URL-encode the slashes); 404 with an OpenAI error for any other id.', ok: 'The model' }) },
    },
    async (req) => {
      const { model } = req.params as { model: string };
      const found = MODELS.find((m) => m.id === model);
      if (!found) throw new ServiceError('not_found', 'MODEL_NOT_FOUND', `model ${model.slice(0, 120)} not found; this server serves ${MODELS.map((m) => m.id).join(', ')}`, [{ field: 'model', reason: 'unknown model' }]);
      return found;
    },
  );

  const submit = async (req: FastifyRequest, request: RunRequest, imageField?: string) => {
    const { run } = await deps.runs.submit(callerOf(req), request, { idempotencyKey: idempotencyKeyHeader(req) }).catch((e) => {
      throw renameFields(e, imageField);
    });
    return run;
  };
  const creates = { createsRun: true };
  const max = INPUT_LIMITS.maxImages;

  const params = openAiParamsJsonSchema();
  const editDocs = docs({
    operationId: 'createImageEdit',
    description: `Edits 1-${max} images by a prompt, as OpenAI's images.edit. Multipart: image / image[] files (or url / url[]) and the fields below; or JSON with images: [{image_url}] (URLs or data: URIs). Holds until the run ends; the run id is in x-kleinserve-run-id.`,
    requestBody: {
      required: true,
      content: {
        'application/json': {
          schema: {
            ...params,
            required: ['prompt', 'images'],
            properties: {
              images: {
                type: 'array',
                minItems: 1,
                maxItems: max,
                items: { type: 'object', required: ['image_url'], additionalProperties: false, properties: { image_url: { type: 'string', description: 'http(s) URL or data: URI' } } },
              },
              ...params.properties,
            },
          },
        },
        'multipart/form-data': {
          schema: {
            ...params,
            properties: {
              image: { type: 'array', items: { type: 'string', format: 'binary' }, maxItems: max, description: `1-${max} reference images (or give url / url[])` },
              url: { type: 'array', items: { type: 'string' }, maxItems: max, description: 'reference image URLs, instead of files' },
              ...params.properties,
            },
          },
        },
      },
    },
    ok: 'The images: b64_json or url per response_format',
  });
  const generationDocs = docs({
    operationId: 'createImageGeneration',
    description: "Generates images from a prompt, as OpenAI's images.generate. Holds until the run ends; the run id is in x-kleinserve-run-id.",
    requestBody: { required: true, content: { 'application/json': { schema: params } } },
    ok: 'The images: b64_json or url per response_format',
  });

  app.post('/v1/images/edits', { schema: { summary: 'OpenAI-compatible image edit (multipart, or JSON with images: [{image_url}])', tags: ['openai'], response: { 200: ImagesResponseSchema } }, config: { ...creates, docs: editDocs } }, async (req, reply) => {
    if (!req.isMultipart() && !isJsonObject(req.body)) {
      throw new ServiceError('unsupported_media_type', 'UNSUPPORTED_MEDIA_TYPE', 'send multipart/form-data with image or image[] files, or JSON with images: [{image_url}]');
    }
    const { params, images } = isJsonObject(req.body) ? readEditJson(req.body) : await readMultipart(req, reply);
    const p = parseParams(params);
    if (images.length === 0) throw invalidInput([{ field: 'image', reason: `give 1-${max} images as image/image[] files or url/url[]` }]);
    if (images.length > max) throw invalidInput([{ field: 'image', reason: `takes at most ${max} images, got ${images.length}` }]);
    const run = await submit(req, toRunRequest(MODEL_EDIT, p, images), isJsonObject(req.body) ? 'images[$1].image_url' : undefined);
    return answer(deps, reply, run, p.response_format ?? 'b64_json');
  });

  app.post('/v1/images/generations', { schema: { summary: 'OpenAI-compatible text-to-image', tags: ['openai'], response: { 200: ImagesResponseSchema } }, config: { ...creates, docs: generationDocs } }, async (req, reply) => {
    const p = parseParams((req.body ?? {}) as Record<string, unknown>);
    const run = await submit(req, toRunRequest(MODEL_TEXT_TO_IMAGE, p, []));
    return answer(deps, reply, run, p.response_format ?? 'b64_json');
  });
}
