// Runflow's run routes: create (edit and text-to-image for every FLUX.2 [klein] model, under both model-id
// forms), read, list, cancel, delete.
// Each parses its wire body into the canonical request, calls the run service and renders the run.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { invalidInput, ServiceError } from '../../errors.ts';
import { callerOf } from '../../http/auth.ts';
import { clientGone, idempotencyKeyHeader } from '../../http/request.ts';
import { DEFAULT_MODEL, editModelId, KLEIN_MODELS, pascalName } from '../../models/registry.ts';
import { zodIssuesToFieldErrors } from '../../plugins/errors.ts';
import type { RunService } from '../../runs/service.ts';
import type { RunRecord } from '../../runs/types.ts';
import { parsePreferWait } from '../../runs/wait.ts';
import { toRunObject, type RunObject } from './run-object.ts';
import {
  CreateRunBodySchema,
  errorResponses,
  isEditModelId,
  ListRunsQuerySchema,
  MODEL_ALIASES,
  PreferHeaderSchema,
  RunIdParamsSchema,
  RunListSchema,
  RunObjectSchema,
  TextToImageBodySchema,
  type CreateRunBody,
  type TextToImageBody,
} from './schemas.ts';
import { toRunRequest } from './inputs.ts';
import { encodePageToken, type PageToken } from './page-token.ts';

export interface RunflowDeps {
  runs: RunService;
  baseUrl: () => string;
}

/** A zod issue as the error plugin reads Fastify's validation issues. */
const asIssueLike = (i: z.core.$ZodIssue) => ({
  instancePath: '/' + i.path.map(String).join('/'),
  message: i.message,
  keyword: i.code,
  params: { keys: 'keys' in i ? i.keys : undefined },
});

const DeletedSchema = z.object({ id: z.string(), deleted: z.literal(true) });

export const runRoutes: FastifyPluginAsyncZod<RunflowDeps> = async (app, { runs, baseUrl }) => {
  const render = (run: RunRecord) => toRunObject(run, baseUrl(), runs.cost(run));

  /** sync_mode: the run object with every output URL replaced by a data URI of its bytes. */
  async function renderInline(run: RunRecord): Promise<RunObject> {
    const obj = render(run);
    if (!obj.output || !run.output) return obj;
    const bytes = await runs.outputBytes(run);
    const outputs = obj.output.outputs.map((o, i) => ({ ...o, url: `data:${o.content_type};base64,${bytes[i].toString('base64')}` }));
    return { ...obj, output: { ...obj.output, outputs } };
  }

  async function create(req: FastifyRequest, reply: FastifyReply, modelId: string, body: CreateRunBody | TextToImageBody) {
    // Only the Idempotency-Key header deduplicates; client_ref is the caller's own reference (Runflow:
    // mutations are not idempotent by default).
    const { run, replayed } = await runs.submit(callerOf(req), toRunRequest(modelId, body), { idempotencyKey: idempotencyKeyHeader(req) });
    if (replayed) reply.header('idempotent-replayed', 'true');
    const sync = body.input.sync_mode === true;
    const wait = sync ? runs.waitCapSeconds : parsePreferWait(req.headers.prefer, runs.waitCapSeconds);
    if (wait === null) return render(run);
    const current = await runs.await(run, wait, clientGone(reply));
    reply.header('preference-applied', `wait=${wait}`);
    return sync ? renderInline(current) : render(current);
  }

  const createSchema = {
    summary: 'Create an edit run',
    tags: ['runs'],
    body: CreateRunBodySchema,
    headers: PreferHeaderSchema,
    response: { 200: RunObjectSchema, ...errorResponses },
  };
  const creates = { createsRun: true };
  const textToImage = {
    summary: 'Create a text-to-image run',
    tags: ['runs'],
    body: TextToImageBodySchema,
    headers: PreferHeaderSchema,
    response: { 200: RunObjectSchema, ...errorResponses },
  };
  // Every family member's routes, from the registry: a model this server does not serve answers 404
  // MODEL_NOT_SERVED from the run service. The 4B's ids come from the OpenAPI table; the others are named here.
  for (const model of KLEIN_MODELS) {
    const named = model.id !== DEFAULT_MODEL;
    const suffix = pascalName(model);
    const id = (base: string) => (named ? { operationId: `${base}${suffix}` } : {});
    const edit = editModelId(model.id);
    const editSchema = { ...createSchema, summary: `Create an edit run on ${model.id}` };
    app.post(`/v1/models/${edit}/runs`, { schema: { ...editSchema, ...id('createEditRun') }, config: creates }, (req, reply) => create(req, reply, edit, req.body));
    app.post(`/v1/models/${editModelId(model.short)}/runs`, { schema: { ...editSchema, ...id('createEditRunShortId') }, config: creates }, (req, reply) =>
      create(req, reply, edit, req.body),
    );
    const t2iSchema = { ...textToImage, summary: `Create a text-to-image run on ${model.id}` };
    app.post(`/v1/models/${model.id}/runs`, { schema: { ...t2iSchema, ...id('createTextToImageRun') }, config: creates }, (req, reply) =>
      create(req, reply, model.id, req.body),
    );
    app.post(`/v1/models/${model.short}/runs`, { schema: { ...t2iSchema, hide: true }, config: creates }, (req, reply) => create(req, reply, model.id, req.body));
  }

  const { body: _checkedBelow, ...wholeIdSchema } = createSchema;
  // Runflow's SDK encodes each model-id segment; a client that encodes the whole id sends one segment. Its
  // body is checked here, against the edit or text-to-image schema that its id names.
  app.post(
    '/v1/models/:model/runs',
    { schema: { ...wholeIdSchema, hide: true, params: z.object({ model: z.string() }) }, config: creates },
    (req, reply) => {
      const modelId = MODEL_ALIASES[req.params.model];
      if (!modelId) throw new ServiceError('not_found', 'MODEL_NOT_FOUND', `unknown model ${JSON.stringify(req.params.model)}`);
      const schema = isEditModelId(modelId) ? CreateRunBodySchema : TextToImageBodySchema;
      const parsed = schema.safeParse(req.body);
      if (!parsed.success) throw invalidInput(zodIssuesToFieldErrors(parsed.error.issues.map(asIssueLike), 'body'));
      return create(req, reply, modelId, parsed.data);
    },
  );

  app.get(
    '/v1/runs/:id',
    { schema: { summary: 'Read a run', tags: ['runs'], params: RunIdParamsSchema, response: { 200: RunObjectSchema, ...errorResponses } } },
    async (req) => render(await runs.get(req.params.id)),
  );

  app.get(
    '/v1/runs',
    { schema: { summary: 'List runs, newest first', tags: ['runs'], querystring: ListRunsQuerySchema, response: { 200: RunListSchema, ...errorResponses } } },
    async (req) => {
      const { limit, pq, status } = req.query;
      const token = (pq ?? null) as PageToken | null;
      let page: RunRecord[];
      let older: boolean;
      let newer: boolean;
      if (token && 'prev' in token) {
        // Newest first; one extra run at the front says there are newer ones still.
        const rows = await runs.list({ limit: limit + 1, before: token.prev, status });
        newer = rows.length > limit;
        page = newer ? rows.slice(1) : rows;
        older = true;
      } else {
        const rows = await runs.list({ limit: limit + 1, cursor: token?.next, status });
        older = rows.length > limit;
        page = rows.slice(0, limit);
        newer = token !== null;
      }
      const first = page[0];
      const last = page[page.length - 1];
      return {
        items: page.map(render),
        next_pq: older && last ? encodePageToken({ next: last.id }) : null,
        prev_pq: newer && first ? encodePageToken({ prev: first.id }) : null,
      };
    },
  );

  const cancelSchema = {
    tags: ['runs'],
    params: RunIdParamsSchema,
    response: { 200: RunObjectSchema, 201: RunObjectSchema, ...errorResponses },
  };
  async function cancel(id: string, reply: FastifyReply) {
    const { run, canceled } = await runs.cancel(id);
    return reply.code(canceled ? 201 : 200).send(render(run));
  }
  app.post('/v1/runs/:id/cancel', { schema: { ...cancelSchema, summary: 'Cancel a run (201 canceled, 200 already terminal)' } }, (req, reply) =>
    cancel(req.params.id, reply),
  );
  app.post(
    '/v1/admin/runs/:id/cancellation',
    { schema: { ...cancelSchema, summary: "Cancel a run, Runflow's route (201 canceled, 200 already terminal)" } },
    (req, reply) => cancel(req.params.id, reply),
  );

  app.delete(
    '/v1/runs/:id',
    {
      schema: {
        summary: 'Delete a run: cancel it if live, then erase its inputs, outputs and record',
        tags: ['runs'],
        params: RunIdParamsSchema,
        response: { 200: DeletedSchema, ...errorResponses },
      },
    },
    async (req) => {
      await runs.delete(req.params.id);
      return { id: req.params.id, deleted: true as const };
    },
  );
};
