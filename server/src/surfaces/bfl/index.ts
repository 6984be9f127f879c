// BFL's API for FLUX.2 [klein] 4B over the run service: POST /v1/flux-2-klein-4b (x-key) answers {id, polling_url};
// GET /v1/get_result?id= answers Pending | Ready (result.sample is the output URL) | Error | Task not found;
// webhook_url gets the same body when the run ends, signed with webhook_secret when one is given.
// Errors carry BFL's `detail` (FastAPI's {loc, msg, type} list for fields) beside the contract's fields.
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { ServiceError } from '../../errors.ts';
import { callerOf } from '../../http/auth.ts';
import { shapeErrors, type ContractError } from '../../http/error-shape.ts';
import { outputUrl } from '../../http/outputs.ts';
import { idempotencyKeyHeader } from '../../http/request.ts';
import { MODEL_EDIT, MODEL_TEXT_TO_IMAGE, type RunRequest } from '../../runs/inputs.ts';
import { INPUT_LIMITS } from '../../runs/limits.ts';
import type { RunRecord } from '../../runs/types.ts';
import type { SurfaceDeps } from '../surface.ts';
import { BflRequestSchema, BflResultQuerySchema, BflResultSchema, BflSubmittedSchema, type BflRequest } from './schemas.ts';
import { BFL_ERROR_JSON_SCHEMA } from './schemas.ts';

const ERROR_DOCS = { errorSchema: BFL_ERROR_JSON_SCHEMA };

/** The header a webhook's signature travels in when the request gave a webhook_secret. */
export const SIGNATURE_HEADER = 'x-bfl-signature';
const IMAGE_FIELDS = ['input_image', 'input_image_2', 'input_image_3', 'input_image_4'] as const;

function toRunRequest(body: BflRequest): RunRequest {
  const images = IMAGE_FIELDS.flatMap((f) => (body[f] === undefined ? [] : [body[f]!]));
  return {
    model_id: images.length ? MODEL_EDIT : MODEL_TEXT_TO_IMAGE,
    input: {
      prompt: body.prompt,
      images,
      seed: body.seed,
      output_format: body.output_format ?? 'jpeg',
      output_quality: INPUT_LIMITS.defaultOutputQuality,
      width: body.width ?? null,
      height: body.height ?? null,
      num_images: 1,
      ...(body.loras?.length ? { loras: body.loras } : {}),
      ...(body.deterministic ? { deterministic: true } : {}),
    },
    callback_url: body.webhook_url ?? null,
    ...(body.webhook_url
      ? { callback: { format: 'bfl', signing: body.webhook_secret ? { scheme: 'hmac-caller' as const, secret: body.webhook_secret, header: SIGNATURE_HEADER } : undefined } }
      : {}),
    metadata: null,
    client_ref: null,
  };
}

/** Canonical field names (intake's) -> BFL's. */
export function bflField(field: string): string {
  const m = /^input\.image_urls\[(\d+)\]/.exec(field);
  if (m) return IMAGE_FIELDS[Number(m[1])] ?? field;
  return field.replace(/^callback_url$/, 'webhook_url').replace(/^input\./, '');
}

function bflError(status: number, err: ContractError) {
  const detail = err.errors.length ? err.errors.map((e) => ({ loc: ['body', e.field], msg: e.reason, type: status === 422 ? 'value_error' : 'request_error' })) : err.message;
  return { detail, ...err };
}

export function bflResult(run: RunRecord, base: string) {
  const status = run.status === 'succeeded' ? 'Ready' : run.status === 'failed' || run.status === 'canceled' ? 'Error' : 'Pending';
  const sec = (ms: number | null) => (ms === null ? null : ms / 1000);
  const img = run.output?.images[0];
  return {
    id: run.id,
    status,
    result:
      status === 'Ready' && img
        ? {
            sample: outputUrl(base, img.key),
            prompt: run.input.prompt,
            seed: run.output!.seed,
            start_time: sec(run.started_at),
            end_time: sec(run.completed_at),
            duration: run.started_at && run.completed_at ? (run.completed_at - run.started_at) / 1000 : null,
          }
        : null,
    progress: status === 'Ready' ? 1 : run.status === 'running' ? 0.5 : status === 'Pending' ? 0 : null,
    details: status === 'Error' ? { code: run.status === 'canceled' ? 'RUN_CANCELED' : run.failure_code, message: run.status === 'canceled' ? 'the run was canceled' : run.failure_message } : null,
  } as const;
}

export function bflWebhookBody(run: RunRecord, base: string): { event: string; body: string } {
  const r = bflResult(run, base);
  return { event: r.status, body: JSON.stringify({ ...r, task_id: run.id }) };
}

export async function bflSurface(root: FastifyInstance, deps: SurfaceDeps): Promise<void> {
  const app = root.withTypeProvider<ZodTypeProvider>();
  shapeErrors(app, { rename: bflField, render: bflError });

  app.post(
    '/v1/flux-2-klein-4b',
    { schema: { summary: 'BFL: create a FLUX.2 [klein] 4B task (x-key)', tags: ['bfl'], body: BflRequestSchema, response: { 200: BflSubmittedSchema } }, config: { createsRun: true, docs: ERROR_DOCS } },
    async (req) => {
      const { run } = await deps.runs.submit(callerOf(req), toRunRequest(req.body), { idempotencyKey: idempotencyKeyHeader(req) });
      return { id: run.id, polling_url: `${deps.baseUrl()}/v1/get_result?id=${run.id}` };
    },
  );

  app.get(
    '/v1/get_result',
    { schema: { summary: 'BFL: poll a task (Pending, Ready with result.sample, Error, Task not found)', tags: ['bfl'], querystring: BflResultQuerySchema, response: { 200: BflResultSchema } }, config: { docs: ERROR_DOCS } },
    async (req) => {
      try {
        return bflResult(await deps.runs.get(req.query.id), deps.baseUrl());
      } catch (err) {
        if (err instanceof ServiceError && err.kind === 'not_found') return { id: req.query.id, status: 'Task not found' as const, result: null, progress: null, details: null };
        throw err;
      }
    },
  );
}
