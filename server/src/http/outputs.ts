// Output files at stable, unguessable URLs (/v1/outputs/<run id>/<128-bit token>.<ext>), with Range,
// ETag and caching headers from @fastify/static. The token is the access control, so no key is needed.
import fastifyStatic from '@fastify/static';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { FastifyReply } from 'fastify';
import type { ObjectStore } from '../storage/object-store.ts';
import { ServiceError } from '../errors.ts';

/** The public URL of a stored output, for every surface's answers. */
export function outputUrl(baseUrl: string, key: string): string {
  return `${baseUrl}/v1/outputs/${key.replace(/^outputs\//, '')}`;
}

const outputRoutes: FastifyPluginAsyncZod<{ objects: ObjectStore & { root?: string } }> = async (app, { objects }) => {
  // Local files go through @fastify/static (Range, ETag); an object store without local files (S3 in a
  // cluster) is proxied, so output URLs and their access rule are the same in every role.
  const local = objects.localPath ? objects.localPath('outputs') : null;
  if (local) await app.register(fastifyStatic, { root: local, serve: false, decorateReply: true });
  app.get(
    '/v1/outputs/:run/:file',
    {
      config: { public: true },
      schema: {
        summary: 'Download an output image',
        tags: ['outputs'],
        params: z.object({
          run: z.string().regex(/^[0-9a-f-]{36}$/),
          file: z.string().regex(/^[0-9a-f]{32}(-\d)?\.(jpg|png|webp)$/),
        }),
      },
    },
    async (req, reply) => {
      if (!local) return proxy(objects, `outputs/${req.params.run}/${req.params.file}`, reply);
      // Outputs never change once published; an overwrite only happens before the run is visible as done.
      return reply.sendFile(`${req.params.run}/${req.params.file}`, { maxAge: '1d', immutable: true, cacheControl: true });
    },
  );
};

const TYPES: Record<string, string> = { jpg: 'image/jpeg', png: 'image/png', webp: 'image/webp' };

async function proxy(objects: ObjectStore, key: string, reply: FastifyReply) {
  let body;
  try {
    body = await objects.stream(key);
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') throw new ServiceError('not_found', 'NOT_FOUND', 'no such output');
    throw err;
  }
  return reply
    .header('content-type', TYPES[key.slice(key.lastIndexOf('.') + 1)] ?? 'application/octet-stream')
    .header('cache-control', 'public, max-age=86400, immutable')
    .send(body);
}

export default outputRoutes;
