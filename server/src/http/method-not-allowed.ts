// A known path asked with a method it does not serve answers 405 with Allow (RFC 9110), not 404 or a
// content-type error. Registered last, once every route exists: it adds one catch route per path.
import type { FastifyInstance, HTTPMethods } from 'fastify';

const METHODS: HTTPMethods[] = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'QUERY' as HTTPMethods];

export function collectPaths(app: FastifyInstance): Map<string, Set<string>> {
  const paths = new Map<string, Set<string>>();
  app.addHook('onRoute', (route) => {
    const set = paths.get(route.url) ?? new Set<string>();
    for (const m of [route.method].flat()) set.add(m.toUpperCase());
    paths.set(route.url, set);
  });
  return paths;
}

export function addMethodNotAllowed(app: FastifyInstance, paths: Map<string, Set<string>>): void {
  for (const [url, served] of [...paths]) {
    if (url === '*' || url.includes('*')) continue;
    const missing = METHODS.filter((m) => !served.has(m) && !(m === 'OPTIONS' && served.has('OPTIONS')));
    if (!missing.length) continue;
    const allow = [...served].join(', ');
    app.route({
      method: missing,
      url,
      config: { public: true },
      schema: { hide: true },
      // onRequest: answer before any body parsing, so a body-carrying method cannot turn this into a 400/415.
      onRequest: async (_req, reply) => {
        return reply.code(405).header('allow', allow).send({ code: 'METHOD_NOT_ALLOWED', message: `use ${allow} on this path`, errors: [] });
      },
      handler: async () => undefined,
    });
  }
}
