// Some official clients (fal's, Replicate's) send Content-Type: application/json on every call, also on a
// cancel that has no body. Fastify refuses an empty JSON body; a surface whose clients do this accepts it as
// no body, with the default (prototype-poisoning-safe) parser for everything else.
import type { FastifyInstance } from 'fastify';

export function acceptEmptyJson(app: FastifyInstance): void {
  const json = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) =>
    body === '' ? done(null, undefined) : json(req, body as string, done),
  );
}
