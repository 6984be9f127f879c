// The playground (web/, built by `npm run build -w web`) served at `/`. The page is static and talks to the same
// API as everyone else; when it has not been built the route says how to build it instead of failing silently.
import fastifyStatic from '@fastify/static';
import type { FastifyInstance } from 'fastify';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// An installed package carries its build in <package>/playground (see scripts/pack-assets.mjs); a checkout has web/dist.
const PACKAGED_PLAYGROUND_DIR = fileURLToPath(new URL('../../playground/', import.meta.url));
export const DEFAULT_PLAYGROUND_DIR = existsSync(PACKAGED_PLAYGROUND_DIR)
  ? PACKAGED_PLAYGROUND_DIR
  : fileURLToPath(new URL('../../../web/dist/', import.meta.url));

export async function playgroundRoutes(app: FastifyInstance, opts: { dir?: string } = {}): Promise<void> {
  const root = opts.dir ?? DEFAULT_PLAYGROUND_DIR;
  if (!existsSync(`${root}/index.html`)) {
    app.get('/', { schema: { hide: true } }, async (_req, reply) =>
      reply.code(503).type('text/plain').send('The playground is not built. Run `npm run build -w web` (or `npm run setup`) and restart.\n'),
    );
    return;
  }
  // The page and its assets are public (auth opt-out, see http/auth.ts); the API calls it makes are not.
  // Each file is its own route, named by a build hash: metrics count them all as one route.
  app.addHook('onRoute', (route) => {
    route.config = { ...(route.config as object), public: true, metricsRoute: '/*' };
  });
  await app.register(fastifyStatic, {
    root,
    prefix: '/',
    index: ['index.html'],
    wildcard: false,
    decorateReply: false,
    // Hashed asset names never change content, so they may be cached for good; index.html must revalidate.
    setHeaders(reply, path) {
      reply.header('cache-control', path.includes('/assets/') ? 'public, max-age=31536000, immutable' : 'no-cache');
    },
  });
}
