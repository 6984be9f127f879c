// Output files at stable, unguessable URLs (/v1/outputs/<run id>/<128-bit token>.<ext>), with Range,
// ETag and caching headers from @fastify/static. The token is the access control, so no key is needed.
import fastifyStatic from '@fastify/static';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { ObjectStore } from '../storage/object-store.ts';

const outputRoutes: FastifyPluginAsyncZod<{ objects: ObjectStore & { root?: string } }> = async (app, { objects }) => {
  if (!objects.localPath) throw new Error('the output route needs an object store with local files');
  await app.register(fastifyStatic, { root: objects.localPath('outputs'), serve: false, decorateReply: true });
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
    (req, reply) => {
      // Outputs never change once published; an overwrite only happens before the run is visible as done.
      return reply.sendFile(`${req.params.run}/${req.params.file}`, { maxAge: '1d', immutable: true, cacheControl: true });
    },
  );
};

export default outputRoutes;
