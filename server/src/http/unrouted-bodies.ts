// A request with a body to a path no route serves is answered 404 before a byte of its body is read. The framework's
// own not-found route reads the whole body first, and auth never applies there (there is no route to protect), so
// without this anyone could hold a connection and its share of the body budget (http/body-budget.ts) with a slow
// body to a made-up path until the request timeout. Bodyless requests keep the framework's own 404.
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import { ServiceError } from '../errors.ts';
import { noRouteMessage } from './framework-errors.ts';
import { bodyBytesOf, lingerAfterAnswer } from './upload-limit.ts';

export default fp(
  async function unroutedBodiesPlugin(app: FastifyInstance) {
    app.addHook('onRequest', async (req, reply) => {
      if (req.routeOptions.url || !bodyBytesOf(req)) return;
      lingerAfterAnswer(req.raw, reply.raw);
      throw new ServiceError('not_found', 'NOT_FOUND', noRouteMessage(req));
    });
  },
  { name: 'unrouted-bodies' },
);
