// fal's proxy protocol: `@fal-ai/client` configured with proxyUrl sends every request to the proxy with the
// real target in `x-fal-target-url` (and the caller's `Authorization: Key`), and expects the target's answer
// back. Here the targets are this server's own fal routes: https://queue.fal.run/<path> -> /fal/queue/<path>,
// https://fal.run/<path> -> /fal/run/<path>, and of fal's REST API the storage uploads the client starts for a
// Blob or File in an input (https://rest.fal.ai/storage/upload/initiate -> /fal/storage/upload/initiate). The
// request is replayed in-process through the whole app, so auth, quotas, limits and errors are exactly those of
// a direct call.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ServiceError } from '../../errors.ts';
import { FAL_ERROR_JSON_SCHEMA } from './schemas.ts';
import { multipartUploadRefusal } from './storage.ts';

const ERROR_DOCS = { errorSchema: FAL_ERROR_JSON_SCHEMA };

export const TARGET_URL_HEADER = 'x-fal-target-url';

const HOSTS: Record<string, string> = { 'queue.fal.run': '/fal/queue', 'fal.run': '/fal/run' };
/** fal's REST API hosts (older clients used the alpha one); of that API only the storage upload is served. */
const REST_HOSTS = new Set(['rest.fal.ai', 'rest.alpha.fal.ai']);
const REST_UPLOAD = '/storage/upload/initiate';
/** Headers that describe this hop, not the request being proxied. */
const HOP = new Set(['host', 'content-length', 'connection', 'transfer-encoding', 'keep-alive', TARGET_URL_HEADER]);

/** The local path a fal target URL maps to, or a 400 naming the header and why. */
export function localTarget(target: string | string[] | undefined): string {
  const bad = (reason: string) => new ServiceError('bad_request', 'BAD_PROXY_TARGET', `${TARGET_URL_HEADER}: ${reason}`, [{ field: `header.${TARGET_URL_HEADER}`, reason }]);
  if (typeof target !== 'string' || !target) throw bad('missing; the fal client sends the URL it means here');
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    throw bad('not a URL');
  }
  const path = url.pathname.replace(/\/+$/, '');
  if (url.protocol === 'https:' && REST_HOSTS.has(url.hostname)) {
    if (path === REST_UPLOAD) return `/fal${path}${url.search}`;
    if (path === `${REST_UPLOAD}-multipart`) throw multipartUploadRefusal();
    throw bad(`of fal's REST API only storage uploads (${REST_UPLOAD}) are served here; got ${JSON.stringify(path).slice(0, 80)}`);
  }
  const prefix = HOSTS[url.hostname];
  if (url.protocol !== 'https:' || !prefix) {
    throw bad(`must be https://queue.fal.run/..., https://fal.run/... or https://rest.fal.ai/storage/upload/...; got host ${JSON.stringify(url.hostname).slice(0, 80)}`);
  }
  return `${prefix}${path}${url.search}`;
}

export async function falProxy(app: FastifyInstance): Promise<void> {
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    const url = localTarget(req.headers[TARGET_URL_HEADER]);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k) && typeof v === 'string') headers[k] = v;
    const answer = await app.inject({
      method: req.method as 'GET' | 'POST' | 'PUT',
      url,
      headers,
      ...(req.method === 'GET' || req.body === undefined ? {} : { payload: JSON.stringify(req.body) }),
    });
    for (const h of ['content-type', 'x-fal-request-id', 'retry-after', 'www-authenticate', 'idempotent-replayed']) {
      const v = answer.headers[h];
      if (v !== undefined) reply.header(h, v);
    }
    return reply.code(answer.statusCode).send(answer.rawPayload);
  };
  const summary = 'fal proxy protocol: answers the request named by x-fal-target-url (https://queue.fal.run/..., https://fal.run/... or https://rest.fal.ai/storage/upload/...)';
  app.route({ method: ['GET', 'POST', 'PUT'], url: '/fal/proxy', schema: { summary, tags: ['fal'] }, config: { docs: ERROR_DOCS }, handler });
}
