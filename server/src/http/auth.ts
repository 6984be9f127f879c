// Bearer API keys on every route except those that opt out with `config: { public: true }` (health,
// metrics, OpenAPI, outputs, whose URLs are unguessable).
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import type { KeyRing } from '../auth/keys.ts';
import { ApiError } from '../routes/errors.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    public?: boolean;
  }
}

export default fp(async function authPlugin(app: FastifyInstance, opts: { keys: KeyRing }) {
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.config?.public || !req.routeOptions.url) return;
    const header = req.headers.authorization;
    const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (!m || !opts.keys.check(m[1])) {
      throw new ApiError(401, 'UNAUTHORIZED', header ? 'invalid API key' : 'missing API key: send Authorization: Bearer <key>', [], {
        'www-authenticate': 'Bearer',
      });
    }
  });
});
