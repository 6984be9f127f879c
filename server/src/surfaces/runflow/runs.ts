// The Runflow run API: create (both edit paths and the SDK's encoded-model-id form), read, list, cancel.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { DecodedImage } from '../images/index.ts';
import type { Engine } from '../engine/supervisor.ts';
import { callerScope, claimIdempotency, idempotencyKeyOf, type IdempotencyOptions } from '../idempotency/claim.ts';
import { assertModelAvailable, intakeEditRun, type IntakeDeps } from '../runs/intake.ts';
import type { RunLifecycle } from '../runs/lifecycle.ts';
import { toRunObject } from '../runs/run-object.ts';
import { isTerminal } from '../runs/types.ts';
import { parsePreferWait, waitForTerminal } from '../runs/wait.ts';
import { ApiError, runNotFound } from './errors.ts';
import { inlineOutputs } from './sync-mode.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import {
  CreateRunBodySchema,
  errorResponses,
  ListRunsQuerySchema,
  MODEL_ALIASES,
  MODEL_EDIT,
  PreferHeaderSchema,
  RunIdParamsSchema,
  RunListSchema,
  RunObjectSchema,
  type CreateRunBody,
} from './runs.schemas.ts';

export interface RunRoutesOptions {
  lifecycle: RunLifecycle;
  engine: Engine;
  intake: IntakeDeps;
  /** Hands decoded inline images to the dispatcher before the run becomes claimable. */
  prime: (runId: string, decoded: Map<number, DecodedImage>) => void;
  baseUrl: () => string;
  waitCapSeconds: number;
  /** Reads outputs back for sync_mode answers. */
  objects: ObjectStore;
  /** A repeated Idempotency-Key / client_ref returns the original run instead of creating another. */
  idempotency: IdempotencyOptions;
}

const runRoutes: FastifyPluginAsyncZod<RunRoutesOptions> = async (app, opts) => {
  const { lifecycle, engine } = opts;
  const { store, bus } = lifecycle;

  const createSchema = {
    summary: 'Create an edit run',
    tags: ['runs'],
    body: CreateRunBodySchema,
    headers: PreferHeaderSchema,
    response: { 200: RunObjectSchema, ...errorResponses },
  };

  async function create(req: FastifyRequest, reply: FastifyReply, modelId: string, body: CreateRunBody) {
    assertModelAvailable(engine.state, engine.status().error);
    const claim = await claimIdempotency(opts.idempotency, callerScope(req), idempotencyKeyOf(req, body.client_ref));
    let run;
    if (claim.kind === 'existing') {
      run = await store.get(claim.runId);
      if (!run) throw runNotFound(claim.runId);
      reply.header('idempotent-replayed', 'true');
    } else {
      try {
        const intake = await intakeEditRun(opts.intake, modelId, body);
        run = intake.run;
        if (claim.kind === 'new') await claim.bind(run.id);
        opts.prime(run.id, intake.decoded);
        await lifecycle.create(run);
      } catch (err) {
        if (claim.kind === 'new') await claim.release();
        throw err;
      }
      req.log.info({ run_id: run.id }, 'run created');
    }
    const sync = body.input.sync_mode === true;
    const wait = sync ? opts.waitCapSeconds : parsePreferWait(req.headers.prefer, opts.waitCapSeconds);
    if (wait === null) return toRunObject(run, opts.baseUrl());
    const closed = new AbortController();
    // The response's 'close' (not the request's, which fires once the body is read) means the client left.
    reply.raw.once('close', () => closed.abort());
    const current = await waitForTerminal(store, bus, run, wait, closed.signal);
    reply.header('preference-applied', `wait=${wait}`);
    return sync ? inlineOutputs(toRunObject(current, opts.baseUrl()), current, opts.objects) : toRunObject(current, opts.baseUrl());
  }

  for (const modelId of Object.keys(MODEL_ALIASES)) {
    app.post(`/v1/models/${modelId}/runs`, { schema: createSchema }, (req, reply) =>
      create(req, reply, MODEL_EDIT, req.body),
    );
  }

  // Runflow's SDK encodes each model-id segment; a client that encodes the whole id sends one segment.
  app.post(
    '/v1/models/:model/runs',
    { schema: { ...createSchema, hide: true, params: z.object({ model: z.string() }) } },
    (req, reply) => {
      const modelId = MODEL_ALIASES[req.params.model];
      if (!modelId) throw new ApiError(404, 'MODEL_NOT_FOUND', `unknown model ${JSON.stringify(req.params.model)}`);
      return create(req, reply, modelId, req.body);
    },
  );

  app.get(
    '/v1/runs/:id',
    { schema: { summary: 'Read a run', tags: ['runs'], params: RunIdParamsSchema, response: { 200: RunObjectSchema, ...errorResponses } } },
    async (req) => {
      const run = await store.get(req.params.id);
      if (!run) throw runNotFound(req.params.id);
      return toRunObject(run, opts.baseUrl());
    },
  );

  app.get(
    '/v1/runs',
    { schema: { summary: 'List runs, newest first', tags: ['runs'], querystring: ListRunsQuerySchema, response: { 200: RunListSchema, ...errorResponses } } },
    async (req) => {
      const { limit, cursor, status } = req.query;
      const rows = await store.list({ limit: limit + 1, cursor, status });
      const page = rows.slice(0, limit);
      const hasMore = rows.length > limit;
      return {
        data: page.map((r) => toRunObject(r, opts.baseUrl())),
        next_cursor: hasMore ? page[page.length - 1].id : null,
        has_more: hasMore,
      };
    },
  );

  const cancelSchema = {
    tags: ['runs'],
    params: RunIdParamsSchema,
    response: { 200: RunObjectSchema, 201: RunObjectSchema, ...errorResponses },
  };
  async function cancel(id: string, reply: FastifyReply) {
    const run = await store.get(id);
    if (!run) throw runNotFound(id);
    if (!isTerminal(run.status)) {
      const canceled = await lifecycle.cancel(run);
      if (canceled) return reply.code(201).send(toRunObject(canceled, opts.baseUrl()));
    }
    const latest = (await store.get(id)) ?? run;
    return reply.code(200).send(toRunObject(latest, opts.baseUrl()));
  }
  app.post('/v1/runs/:id/cancel', { schema: { ...cancelSchema, summary: 'Cancel a run (201 canceled, 200 already terminal)' } }, (req, reply) =>
    cancel(req.params.id, reply),
  );
  app.post(
    '/v1/admin/runs/:id/cancellation',
    { schema: { ...cancelSchema, summary: "Cancel a run, Runflow's route (201 canceled, 200 already terminal)" } },
    (req, reply) => cancel(req.params.id, reply),
  );
};

export default runRoutes;
