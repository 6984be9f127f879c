// fal's API for FLUX.2 [klein] 4B over the run service, so `@fal-ai/client` works unchanged:
//   queue   POST /fal/queue/fal-ai/flux-2/klein/4b[/edit][?fal_webhook=URL]  -> {request_id, status_url, ...}
//           GET  /fal/queue/fal-ai/flux-2/requests/{id}/status[?logs=1]      -> IN_QUEUE | IN_PROGRESS | COMPLETED
//           GET  /fal/queue/fal-ai/flux-2/requests/{id}                      -> the result (or the failure)
//           PUT  /fal/queue/fal-ai/flux-2/requests/{id}/cancel
//   sync    POST /fal/run/fal-ai/flux-2/klein/4b[/edit]                      -> the result, held until the end
//   storage POST /fal/storage/upload/initiate {content_type, file_name}      -> {upload_url, file_url} (storage.ts)
//   proxy   ANY  /fal/proxy with x-fal-target-url: https://queue.fal.run/..., https://fal.run/... or
//           https://rest.fal.ai/storage/upload/... (what the client sends with proxyUrl), answered by the routes
//           above as if called directly.
//   webhook keys  GET /.well-known/jwks.json (public)                   -> the key fal_webhook deliveries are signed
//           with, where a receiver written for fal's docs points its verifier instead of fal's JWKS URL (jwks.ts)
// Errors carry fal's `detail` (a list of {loc, msg, type} for a field, else a string) and the contract's fields.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { keyId } from '../../auth/keys.ts';
import type { Ed25519Jwk } from '../../callbacks/signing.ts';
import { ServiceError } from '../../errors.ts';
import { callerOf } from '../../http/auth.ts';
import { acceptEmptyJson } from '../../http/empty-json.ts';
import { shapeErrors } from '../../http/error-shape.ts';
import { clientGone, idempotencyKeyHeader } from '../../http/request.ts';
import { MODEL_EDIT, MODEL_TEXT_TO_IMAGE } from '../../runs/inputs.ts';
import { isTerminal, type RunRecord } from '../../runs/types.ts';
import type { SurfaceDeps } from '../surface.ts';
import { falField, SYNC_MODE_METADATA, toRunRequest } from './inputs.ts';
import { falJwks } from './jwks.ts';
import { falProxy } from './proxy.ts';
import { falStorage } from './storage.ts';
import { APP_ID, failureDetail, requestUrls, resultBody, statusBody } from './render.ts';
import {
  FalCancelSchema,
  FalEditInputSchema,
  FalRequestParamsSchema,
  FalResultSchema,
  FalStatusQuerySchema,
  FalStatusSchema,
  FalSubmitQuerySchema,
  FalSubmittedSchema,
  FalTextToImageInputSchema,
  type FalInput,
} from './schemas.ts';
import { FAL_ERROR_JSON_SCHEMA } from './schemas.ts';

const ERROR_DOCS = { errorSchema: FAL_ERROR_JSON_SCHEMA };

/** fal endpoint id -> the canonical model and its input schema. */
const ENDPOINTS = [
  { id: 'fal-ai/flux-2/klein/4b/edit', model: MODEL_EDIT, body: FalEditInputSchema },
  { id: 'fal-ai/flux-2/klein/4b', model: MODEL_TEXT_TO_IMAGE, body: FalTextToImageInputSchema },
] as const;

/** Queued runs ahead of this one are counted up to this many. */
const MAX_QUEUE_POSITION = 1000;

function falDetail(status: number, err: { code: string; message: string; errors: { field: string; reason: string }[] }) {
  const detail = err.errors.length
    ? err.errors.map((e) => ({
        loc: ['body', ...e.field.split(/[.[\]]+/).filter(Boolean).map((s) => (/^\d+$/.test(s) ? Number(s) : s))],
        msg: e.reason,
        type: status === 422 ? 'value_error' : 'request_error',
      }))
    : err.message;
  return { detail, ...err };
}

export async function falSurface(root: FastifyInstance, deps: SurfaceDeps & { webhookJwks?: { keys: Ed25519Jwk[] } }): Promise<void> {
  const app = root.withTypeProvider<ZodTypeProvider>();
  const { runs } = deps;
  shapeErrors(app, { rename: falField, render: falDetail });
  acceptEmptyJson(app);
  app.addHook('onSend', async (req, reply) => {
    const id = (req.params as { id?: string } | undefined)?.id;
    // Only an id that can be a request id (a path parameter may hold anything a header cannot).
    if (id && /^[\w-]{1,64}$/.test(id)) reply.header('x-fal-request-id', id);
  });

  const syncModeOf = (run: RunRecord) => run.metadata?.[SYNC_MODE_METADATA] === true;

  async function submit(req: FastifyRequest, model: string, input: FalInput, webhook: string | null): Promise<RunRecord> {
    const caller = callerOf(req);
    const userId = caller.scope === 'anonymous' ? caller.scope : keyId(caller.scope);
    const { run } = await runs.submit(caller, toRunRequest(model, input, webhook, userId), { idempotencyKey: idempotencyKeyHeader(req) });
    return run;
  }

  async function queuePosition(run: RunRecord): Promise<number> {
    if (run.status !== 'queued') return 0;
    return (await runs.list({ limit: MAX_QUEUE_POSITION, cursor: run.id, status: ['queued'] })).length;
  }

  async function sendResult(reply: FastifyReply, run: RunRecord, opts: { erase: boolean }) {
    if (run.status !== 'succeeded') {
      const { status, body } = failureDetail(run);
      return reply.code(status).send(body);
    }
    const inline = syncModeOf(run) || opts.erase;
    const body = resultBody(run, deps.baseUrl(), inline ? await runs.outputBytes(run) : undefined);
    reply.header('x-fal-request-id', run.id);
    await reply.send(body);
    // fal's sync_mode on the synchronous route: the answer carries the images and nothing is kept.
    if (opts.erase) await runs.delete(run.id).catch((err) => reply.log.warn({ err, run_id: run.id }, 'erasing a sync_mode run failed'));
    return reply;
  }

  for (const ep of ENDPOINTS) {
    app.post(
      `/fal/queue/${ep.id}`,
      {
        schema: {
          summary: `fal queue: submit a ${ep.id} request`,
          tags: ['fal'],
          body: ep.body,
          querystring: FalSubmitQuerySchema,
          response: { 200: FalSubmittedSchema },
        },
        config: { createsRun: true, docs: ERROR_DOCS },
      },
      async (req) => {
        const run = await submit(req, ep.model, req.body as FalInput, req.query.fal_webhook ?? null);
        return { status: 'IN_QUEUE' as const, request_id: run.id, ...requestUrls(deps.baseUrl(), run.id), queue_position: await queuePosition(run) };
      },
    );
    app.post(
      `/fal/run/${ep.id}`,
      { schema: { summary: `fal: run ${ep.id} and answer the result`, tags: ['fal'], body: ep.body }, config: { createsRun: true, docs: ERROR_DOCS } },
      async (req, reply) => {
        const input = req.body as FalInput;
        const created = await submit(req, ep.model, input, null);
        reply.header('x-fal-request-id', created.id);
        const run = await runs.awaitEnd(created, Math.max(runs.waitCapSeconds, 300), clientGone(reply));
        if (!isTerminal(run.status)) {
          throw new ServiceError('timeout', 'TIMEOUT', `request ${run.id} is still ${run.status}; poll ${requestUrls(deps.baseUrl(), run.id).status_url}`);
        }
        return sendResult(reply, run, { erase: input.sync_mode === true });
      },
    );
  }

  // fal's client addresses a request under the app id; fal's own status_url may carry the whole endpoint id.
  for (const prefix of [APP_ID, ...ENDPOINTS.map((e) => e.id)]) {
    const hide = prefix !== APP_ID;
    app.get(
      `/fal/queue/${prefix}/requests/:id/status`,
      { schema: { summary: 'fal queue: request status', tags: ['fal'], hide, params: FalRequestParamsSchema, querystring: FalStatusQuerySchema, response: { 200: FalStatusSchema, 202: FalStatusSchema } }, config: { docs: ERROR_DOCS } },
      async (req, reply) => {
        const run = await runs.get(req.params.id);
        const logs = req.query.logs === '1' || req.query.logs === 'true';
        const body = statusBody(run, deps.baseUrl(), { logs, queuePosition: await queuePosition(run) });
        return reply.code(body.status === 'COMPLETED' ? 200 : 202).send(body);
      },
    );
    app.get(
      `/fal/queue/${prefix}/requests/:id`,
      { schema: { summary: 'fal queue: request result', tags: ['fal'], hide, params: FalRequestParamsSchema, response: { 200: FalResultSchema } }, config: { docs: ERROR_DOCS } },
      async (req, reply) => {
        const run = await runs.get(req.params.id);
        if (!isTerminal(run.status)) {
          throw new ServiceError('bad_request', 'REQUEST_IN_PROGRESS', `request ${run.id} is still in progress (${run.status}); poll its status_url`);
        }
        return sendResult(reply, run, { erase: false });
      },
    );
    app.put(
      `/fal/queue/${prefix}/requests/:id/cancel`,
      {
        schema: {
          summary: 'fal queue: cancel a request (202 requested, 400 already completed)',
          tags: ['fal'],
          hide,
          params: FalRequestParamsSchema,
          response: { 202: FalCancelSchema, 400: FalCancelSchema },
        }, config: { docs: ERROR_DOCS } },
      async (req, reply) => {
        const { canceled } = await runs.cancel(req.params.id);
        if (canceled) return reply.code(202).send({ status: 'CANCELLATION_REQUESTED' as const });
        const message = `request ${req.params.id} already completed`;
        return reply.code(400).send({ status: 'ALREADY_COMPLETED' as const, detail: message, code: 'ALREADY_COMPLETED', message, errors: [] });
      },
    );
  }

  await falStorage(app, deps);
  await falProxy(app);
  if (deps.webhookJwks) await falJwks(app, deps.webhookJwks);
}
