// API keys on every route except those that opt out with `config: { public: true }` (health,
// metrics, OpenAPI, outputs, whose URLs are unguessable). A public route that shows a keyed caller more (an
// uploaded asset only its owner may read) adds `optionalKey: true`: a key it is sent is checked like anywhere
// else. The caller handed to the run service is the hash of its key, never the key itself.
import fp from 'fastify-plugin';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { hashKey, type KeyRing } from '../auth/keys.ts';
import { ServiceError } from '../errors.ts';
import type { Caller } from '../runs/service.ts';
import { bodyBytesOf, lingerAfterAnswer } from './upload-limit.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    public?: boolean;
    /** With `public`: no key needed, but one that is sent must be valid. */
    optionalKey?: boolean;
  }
}

/**
 * The API key a request carries, in any of the forms the supported clients send, all checked against the
 * same keys: `Authorization: Bearer <key>` (Runflow, OpenAI, Replicate), `Authorization: Key <key>` (fal),
 * `x-key: <key>` (BFL).
 */
export function bearerKey(req: FastifyRequest): string | null {
  const m = /^(?:Bearer|Key)\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  if (m) return m[1];
  const x = req.headers['x-key'];
  return typeof x === 'string' && x.trim() ? x.trim() : null;
}

/** The caller's identity for idempotency and quotas. */
export function callerOf(req: FastifyRequest): Caller {
  const key = bearerKey(req);
  return { scope: key ? hashKey(key) : 'anonymous', log: req.log as Caller['log'] };
}

/** Whether the request's key is checked (so, past this plugin, valid): keyed routes, and public ones sent a key they check. */
export function keyChecked(req: FastifyRequest): boolean {
  const config = req.routeOptions.config;
  const header = req.headers.authorization ?? req.headers['x-key'];
  return !!req.routeOptions.url && !(config?.public && !(config.optionalKey && header));
}

export default fp(async function authPlugin(app: FastifyInstance, opts: { keys: KeyRing }) {
  app.addHook('onRequest', async (req, reply) => {
    if (!keyChecked(req)) return;
    const header = req.headers.authorization ?? req.headers['x-key'];
    const key = bearerKey(req);
    if (!key || !opts.keys.check(key)) {
      // Refused before its body: drained only briefly, never read whole for a caller without a key
      if (bodyBytesOf(req)) lingerAfterAnswer(req.raw, reply.raw);
      throw new ServiceError('unauthorized', 'UNAUTHORIZED', header ? 'invalid API key' : 'missing API key: send Authorization: Bearer <key> (or Key <key>, or an x-key header)');
    }
  });
}, { name: 'auth' });
