// Request logs keep method, path and peer, never a secret: an output URL's 128-bit token is its only
// access control, so it is masked before any request line is logged. (Headers and bodies, where keys
// and image bytes travel, are never logged at all.)
import type { FastifyServerOptions } from 'fastify';

type ChildLoggerFactory = NonNullable<FastifyServerOptions['childLoggerFactory']>;

const OUTPUT_TOKEN = /(\/v1\/outputs\/[^/?]+\/)[0-9a-f]{32}/g;

export const redactUrl = (url: string): string => url.replace(OUTPUT_TOKEN, '$1<token>');

function requestForLog(req: { method: string; url: string; host?: string; ip?: string; socket?: { remotePort?: number } }) {
  return { method: req.method, url: redactUrl(req.url), host: req.host, remoteAddress: req.ip, remotePort: req.socket?.remotePort };
}

export const redactingChildLogger: ChildLoggerFactory = function (logger, bindings, opts) {
  return logger.child(bindings, { ...opts, serializers: { ...opts.serializers, req: requestForLog as never } });
};
