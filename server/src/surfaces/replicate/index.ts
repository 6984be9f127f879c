// Replicate's prediction API for black-forest-labs/flux-2-klein-4b over the run service, so the official
// `replicate` client works with baseUrl http://HOST/v1:
//   POST /v1/models/black-forest-labs/flux-2-klein-4b/predictions, POST /v1/predictions (by version),
//   GET /v1/predictions/{id}, GET /v1/predictions (cursor pages), POST /v1/predictions/{id}/cancel,
//   GET /v1/predictions/{id}/stream (SSE: output, error, done), Prefer: wait[=N] (capped at 60 s),
//   webhooks filtered by webhook_events_filter and signed as Standard Webhooks (secret at
//   GET /v1/webhooks/default/secret), and the Files API (files.ts).
// Errors carry Replicate's {title, detail, status} (and invalid_fields for input) beside the contract's fields.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { invalidInput, ServiceError } from '../../errors.ts';
import { callerOf } from '../../http/auth.ts';
import { acceptEmptyJson } from '../../http/empty-json.ts';
import { shapeErrors, type ContractError } from '../../http/error-shape.ts';
import { clientGone, idempotencyKeyHeader } from '../../http/request.ts';
import { parsePreferWait } from '../../runs/wait.ts';
import { isTerminal, type RunRecord } from '../../runs/types.ts';
import type { SurfaceDeps } from '../surface.ts';
import { fileRoutes } from './files.ts';
import { replicateField, toRunRequest } from './inputs.ts';
import { toPrediction } from './render.ts';
import {
  ListQuerySchema,
  MODEL,
  ModelPredictionBodySchema,
  PredictionBodySchema,
  PredictionListSchema,
  PredictionParamsSchema,
  PredictionSchema,
  PreferHeaderSchema,
  StreamParamsSchema,
  VERSION,
  type PredictionBody,
} from './schemas.ts';
import { REPLICATE_ERROR_JSON_SCHEMA } from './schemas.ts';

const ERROR_DOCS = { errorSchema: REPLICATE_ERROR_JSON_SCHEMA };

const PAGE_SIZE = 100;
const TITLES: Record<number, string> = { 400: 'Bad request', 401: 'Unauthenticated', 404: 'Not found', 409: 'Conflict', 413: 'Payload too large', 422: 'Input validation failed', 429: 'Too many requests', 503: 'Service unavailable' };

function replicateError(status: number, err: ContractError) {
  return {
    title: TITLES[status] ?? (status >= 500 ? 'Internal server error' : 'Request failed'),
    detail: err.errors.length ? err.errors.map((e) => `- ${e.field}: ${e.reason}`).join('\n') : err.message,
    status,
    ...(err.errors.length ? { invalid_fields: err.errors.map((e) => ({ type: 'invalid', field: e.field, description: e.reason })) } : {}),
    ...err,
  };
}

export async function replicateSurface(root: FastifyInstance, deps: SurfaceDeps & { standardWebhooksSecret?: string }): Promise<void> {
  const app = root.withTypeProvider<ZodTypeProvider>();
  const { runs } = deps;
  shapeErrors(app, { rename: replicateField, render: replicateError });
  acceptEmptyJson(app);
  const render = (run: RunRecord) => toPrediction(run, deps.baseUrl());

  async function create(req: FastifyRequest, reply: FastifyReply, body: PredictionBody) {
    const { run, replayed } = await runs.submit(callerOf(req), toRunRequest(body), { idempotencyKey: idempotencyKeyHeader(req) });
    if (replayed) reply.header('idempotent-replayed', 'true');
    const wait = parsePreferWait(req.headers.prefer, runs.waitCapSeconds);
    const current = wait === null ? run : await runs.await(run, wait, clientGone(reply));
    if (wait !== null) reply.header('preference-applied', `wait=${wait}`);
    return reply.code(201).header('location', `${deps.baseUrl()}/v1/predictions/${run.id}`).send(render(current));
  }

  const createSchema = { tags: ['replicate'], headers: PreferHeaderSchema, response: { 201: PredictionSchema } };
  app.post(
    `/v1/models/${MODEL}/predictions`,
    { schema: { ...createSchema, summary: `Replicate: create a ${MODEL} prediction`, body: ModelPredictionBodySchema }, config: { createsRun: true, docs: ERROR_DOCS } },
    (req, reply) => create(req, reply, req.body),
  );
  app.post(
    '/v1/predictions',
    { schema: { ...createSchema, summary: 'Replicate: create a prediction of a model version', body: PredictionBodySchema }, config: { createsRun: true, docs: ERROR_DOCS } },
    (req, reply) => {
      const { version, ...body } = req.body;
      if (![VERSION, MODEL, `${MODEL}:${VERSION}`].includes(version)) {
        throw invalidInput([{ field: 'version', reason: `unknown version; this server runs ${MODEL} (version ${VERSION})` }]);
      }
      return create(req, reply, body);
    },
  );

  app.get(
    '/v1/predictions/:id',
    { schema: { summary: 'Replicate: read a prediction', tags: ['replicate'], params: PredictionParamsSchema, response: { 200: PredictionSchema } }, config: { docs: ERROR_DOCS } },
    async (req) => render(await runs.get(req.params.id)),
  );

  app.post(
    '/v1/predictions/:id/cancel',
    { schema: { summary: 'Replicate: cancel a prediction (answers it as it stands)', tags: ['replicate'], params: PredictionParamsSchema, response: { 200: PredictionSchema } }, config: { docs: ERROR_DOCS } },
    async (req) => render((await runs.cancel(req.params.id)).run),
  );

  app.get(
    '/v1/predictions',
    { schema: { summary: 'Replicate: list predictions, newest first', tags: ['replicate'], querystring: ListQuerySchema, response: { 200: PredictionListSchema } }, config: { docs: ERROR_DOCS } },
    async (req) => {
      const rows = await runs.list({ limit: PAGE_SIZE + 1, cursor: req.query.cursor });
      const page = rows.slice(0, PAGE_SIZE);
      const more = rows.length > PAGE_SIZE;
      return {
        previous: null,
        next: more ? `${deps.baseUrl()}/v1/predictions?cursor=${encodeURIComponent(page[page.length - 1].id)}` : null,
        results: page.map(render),
      };
    },
  );

  // Replicate's client opens urls.stream without its key, so the URL carries the run's output token (which
  // guards its outputs too): unguessable, like an output URL.
  app.get(
    '/v1/predictions/:id/stream/:token',
    {
      config: {
        public: true,
        docs: { ...ERROR_DOCS, responses: { 200: { description: 'event: output (an output URL) per output, event: error on failure, then event: done', content: {
                'text/event-stream': {
                  schema: {
                    type: 'object',
                    required: ['event', 'data'],
                    properties: { event: { type: 'string', enum: ['output', 'error', 'done'] }, id: { type: 'string' }, data: { type: 'string', description: 'output: a URL; error: {detail}; done: {} or {reason}' } },
                  },
                },
              } } } },
      },
      schema: { summary: 'Replicate: output of a prediction as Server-Sent Events (output, error, done)', tags: ['replicate'], params: StreamParamsSchema },
    },
    async (req, reply) => {
      const following = await runs.follow(req.params.id);
      if (following.run.output_token !== req.params.token) {
        following.stop();
        throw new ServiceError('not_found', 'PREDICTION_NOT_FOUND', `prediction ${req.params.id} not found`);
      }
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache, no-transform', 'x-accel-buffering': 'no' });
      let done = false;
      const end = (run: RunRecord) => {
        if (done) return;
        done = true;
        following.stop();
        const p = render(run);
        for (const url of p.output ?? []) res.write(`event: output\nid: ${run.id}\ndata: ${url}\n\n`);
        if (run.status === 'failed') res.write(`event: error\ndata: ${JSON.stringify({ detail: p.error })}\n\n`);
        res.write(`event: done\ndata: ${JSON.stringify(run.status === 'canceled' ? { reason: 'canceled' } : {})}\n\n`);
        res.end();
      };
      res.on('close', () => {
        done = true;
        following.stop();
      });
      if (isTerminal(following.run.status)) return end(following.run);
      following.attach((ev) => {
        if (ev.type === 'status' && isTerminal(ev.run.status)) end(ev.run);
      });
    },
  );

  app.get(
    '/v1/webhooks/default/secret',
    { schema: { summary: 'Replicate: the secret webhooks are signed with (Standard Webhooks)', tags: ['replicate'], response: { 200: z.object({ key: z.string() }) } }, config: { docs: ERROR_DOCS } },
    async () => {
      if (!deps.standardWebhooksSecret) throw new ServiceError('unavailable', 'WEBHOOKS_UNAVAILABLE', 'this role does not sign webhooks');
      return { key: deps.standardWebhooksSecret };
    },
  );

  await app.register(fileRoutes, deps);
}
