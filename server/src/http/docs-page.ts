// The interactive API reference at /docs (Swagger UI via @fastify/swagger-ui) over the same document as
// /openapi.json. Every asset is served from the package itself, so the page works offline, under the
// playground's Content-Security-Policy (scripts from this origin only) with one relaxation: inline styles.
// The page is public, like /openapi.json; "Authorize" takes a key for the calls a reader tries from it.
import fastifySwaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';

export const DOCS_PATH = '/docs';

export async function docsPage(app: FastifyInstance): Promise<void> {
  app.addHook('onRoute', (route) => {
    route.config = { ...(route.config as object), public: true };
  });
  await app.register(fastifySwaggerUi, {
    routePrefix: DOCS_PATH,
    uiConfig: {
      // No call to the public validator service: the page must not reach beyond this server.
      validatorUrl: null,
      deepLinking: true,
      displayOperationId: true,
      tryItOutEnabled: false,
      persistAuthorization: false,
    },
    logLevel: 'warn',
    // Swagger UI sets a few inline styles; styles cannot run code, so only this page allows them.
    transformStaticCSP: (header) => header.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'"),
  });
}
