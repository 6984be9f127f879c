// Builds the Fastify instance from injected parts, so the embedded `serve` role, cluster `api` replicas and
// tests can each wire their own store, dispatcher and engine behind the same routes.
import fs from 'node:fs';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import fastifySwagger from '@fastify/swagger';
import type { Logger } from 'pino';
import { v7 as uuidv7 } from 'uuid';
import {
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  serializerCompiler,
  validatorCompiler,
} from 'fastify-type-provider-zod';
import type { KeyRing } from './auth/keys.ts';
import type { Engine } from './engine/supervisor.ts';
import type { AppHardening } from './hardening/index.ts';
import type { DecodedImage } from './images/index.ts';
import authPlugin from './plugins/auth.ts';
import errorsPlugin from './plugins/errors.ts';
import metricsPlugin, { type Metrics } from './plugins/metrics.ts';
import rateLimitPlugin from './limits/rate-limit-plugin.ts';
import { isRepeat } from './idempotency/claim.ts';
import { addMethodNotAllowed, collectPaths } from './hardening/method-not-allowed.ts';
import { collectRouteFacts, documentErrors } from './hardening/openapi.ts';
import securityHeaders from './hardening/security-headers.ts';
import { deleteRunRoutes } from './routes/delete-run.ts';
import healthRoutes from './routes/health.ts';
import outputRoutes from './routes/outputs.ts';
import runRoutes from './routes/runs.ts';
import { openAiImagesRoutes } from './routes/openai-images.ts';
import { playgroundRoutes } from './routes/playground.ts';
import { runEventsRoutes } from './routes/run-events.ts';
import { textToImageRoutes } from './routes/text-to-image.ts';
import type { IntakeDeps } from './runs/intake.ts';
import type { RunLifecycle } from './runs/lifecycle.ts';
import type { ObjectStore } from './storage/object-store.ts';

export interface AppDeps {
  logger: Logger;
  lifecycle: RunLifecycle;
  engine: Engine;
  objects: ObjectStore;
  keys: KeyRing;
  metrics: Metrics;
  intake: IntakeDeps;
  prime: (runId: string, decoded: Map<number, DecodedImage>) => void;
  baseUrl: () => string;
  waitCapSeconds: number;
  bodyLimitBytes: number;
  /** Quotas, idempotency, retention and HTTP limits (hardening/index.ts builds them per role). */
  hardening: AppHardening;
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger,
    bodyLimit: deps.bodyLimitBytes,
    requestIdHeader: 'x-request-id',
    logController: new LogController({ requestIdLogLabel: 'request_id' }),
    genReqId: () => uuidv7(),
    ...deps.hardening.http,
    routerOptions: { ignoreTrailingSlash: true, ...deps.hardening.http.routerOptions },
  });
  const routeFacts = collectRouteFacts(app);
  const routePaths = collectPaths(app);
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  await app.register(errorsPlugin);
  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'kleinserve',
        version: '0.1.0',
        description: 'Self-hosted FLUX.2 [klein] 4B image edits with a Runflow-compatible run API.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
    transformObject: (doc) => documentErrors(jsonSchemaTransformObject(doc), routeFacts),
  });
  await app.register(authPlugin, { keys: deps.keys });
  await app.register(securityHeaders);
  await app.register(rateLimitPlugin, {
    limiter: deps.hardening.limiter,
    bus: deps.lifecycle.bus,
    isRepeat: (req) => isRepeat(deps.hardening.idempotency, req),
  });
  await app.register(metricsPlugin, { metrics: deps.metrics, engine: deps.engine });

  if (deps.objects.localPath) fs.mkdirSync(deps.objects.localPath('outputs'), { recursive: true });
  await app.register(healthRoutes, { engine: deps.engine });
  await app.register(outputRoutes, { objects: deps.objects });
  await app.register(runRoutes, {
    lifecycle: deps.lifecycle,
    engine: deps.engine,
    intake: deps.intake,
    prime: deps.prime,
    baseUrl: deps.baseUrl,
    waitCapSeconds: deps.waitCapSeconds,
    objects: deps.objects,
    idempotency: deps.hardening.idempotency,
  });
  await app.register(deleteRunRoutes, { lifecycle: deps.lifecycle, retention: deps.hardening.retention });
  await app.register(runEventsRoutes, deps);
  await app.register(textToImageRoutes, deps);
  await app.register(openAiImagesRoutes, deps);
  await app.register(playgroundRoutes);
  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
  addMethodNotAllowed(app, routePaths);
  return app as unknown as FastifyInstance;
}
