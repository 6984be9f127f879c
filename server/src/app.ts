// Builds the Fastify instance: the shared HTTP pieces (errors, auth, OpenAPI, metrics, security headers,
// outputs, playground, 405s), then one plugin per API surface over the one run service. Roles hand in the
// service and backends they built, so `serve`, cluster `api` replicas and tests share every route.
import fs from 'node:fs';
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
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
import type { Ed25519Jwk } from './callbacks/signing.ts';
import type { EngineStatusView } from './engine/engine.ts';
import authPlugin from './http/auth.ts';
import bodyBudget from './http/body-budget.ts';
import unroutedBodies from './http/unrouted-bodies.ts';
import bodyGuard from './http/body-guard.ts';
import { addMethodNotAllowed, collectPaths } from './http/method-not-allowed.ts';
import metricsPlugin from './http/metrics.ts';
import { docsPage } from './http/docs-page.ts';
import { collectRouteFacts, completeDocument } from './http/openapi.ts';
import outputRoutes from './http/outputs.ts';
import { playgroundRoutes } from './http/playground.ts';
import requestLog from './http/request-log.ts';
import securityHeaders from './http/security-headers.ts';
import storedInputRoutes from './http/stored-inputs.ts';
import uploadRoutes from './http/uploads.ts';
import type { Metrics } from './metrics.ts';
import type { BodyBudgetBounds } from './policy-config.ts';
import errorsPlugin from './plugins/errors.ts';
import type { RunService } from './runs/service.ts';
import type { StorageHealth } from './storage/health.ts';
import type { ObjectStore } from './storage/object-store.ts';
import { bflSurface } from './surfaces/bfl/index.ts';
import { falSurface } from './surfaces/fal/index.ts';
import { openAiSurface } from './surfaces/openai/index.ts';
import { replicateSurface } from './surfaces/replicate/index.ts';
import { runflowSurface } from './surfaces/runflow/index.ts';
import type { SurfaceDeps } from './surfaces/surface.ts';

export interface AppDeps {
  logger: Logger;
  runs: RunService;
  engine: EngineStatusView;
  objects: ObjectStore;
  keys: KeyRing;
  metrics: Metrics;
  baseUrl: () => string;
  bodyLimitBytes: number;
  /** Server options that bound what one client can hold (http/server-options.ts). */
  http: Partial<FastifyServerOptions>;
  /** Bytes of request bodies held at once, per API key and in all (http/body-budget.ts); absent: unbounded. */
  bodyBudget?: BodyBudgetBounds;
  /** Whether GET /metrics needs an API key (http/metrics.ts: metricsRequireKey). */
  metricsRequireKey?: boolean;
  /** Whether storage takes writes, for health. */
  storage?: Pick<StorageHealth, 'snapshot'>;
  /** The whsec_ secret Standard Webhooks deliveries are signed with (served to Replicate's clients). */
  standardWebhooksSecret?: string;
  /** The public keys fal webhook deliveries are signed with (served at /.well-known/jwks.json). */
  falWebhookJwks?: { keys: Ed25519Jwk[] };
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger,
    bodyLimit: deps.bodyLimitBytes,
    requestIdHeader: 'x-request-id',
    // http/request-log.ts writes one line per request instead of Fastify's two.
    logController: new LogController({ requestIdLogLabel: 'request_id', disableRequestLogging: true }),
    genReqId: () => uuidv7(),
    ...deps.http,
    routerOptions: { ignoreTrailingSlash: true, ...deps.http.routerOptions },
  });
  const routeFacts = collectRouteFacts(app);
  const routePaths = collectPaths(app);
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  await app.register(errorsPlugin);
  await app.register(requestLog);
  await app.register(bodyGuard);
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
    transformObject: (doc) => completeDocument(jsonSchemaTransformObject(doc), routeFacts, { serverUrl: deps.baseUrl() || undefined }),
  });
  await app.register(authPlugin, { keys: deps.keys });
  await app.register(unroutedBodies);
  // After auth: a request is charged to its key only once the key is known good, and refused ones never are.
  if (deps.bodyBudget) await app.register(bodyBudget, { bounds: deps.bodyBudget, metrics: deps.metrics });
  await app.register(securityHeaders);
  await app.register(metricsPlugin, { metrics: deps.metrics, engine: deps.engine, requireKey: deps.metricsRequireKey });

  if (deps.objects.localPath) fs.mkdirSync(deps.objects.localPath('outputs'), { recursive: true });
  await app.register(outputRoutes, { objects: deps.objects });
  await app.register(storedInputRoutes, { runs: deps.runs });
  await app.register(uploadRoutes, { runs: deps.runs });

  const surface: SurfaceDeps = { runs: deps.runs, engine: deps.engine, baseUrl: deps.baseUrl, storage: deps.storage };
  await app.register(runflowSurface, surface);
  await app.register(openAiSurface, surface);
  await app.register(falSurface, { ...surface, webhookJwks: deps.falWebhookJwks });
  await app.register(replicateSurface, { ...surface, standardWebhooksSecret: deps.standardWebhooksSecret });
  await app.register(bflSurface, surface);

  await app.register(playgroundRoutes);
  await app.register(docsPage);
  app.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => app.swagger());
  addMethodNotAllowed(app, routePaths);
  return app as unknown as FastifyInstance;
}
