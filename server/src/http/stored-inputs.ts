// Stored inputs at unguessable URLs, like outputs: the bytes of an uploaded asset (/v1/assets/{id}/{token})
// and of an earlier run's inline input (/v1/inputs/{run}/{token}/{i}). The token is the access control, and
// for an owner-only asset (fal's file_url) its owner's key with it.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RunService } from '../runs/service.ts';
import { bearerKey, callerOf } from './auth.ts';

const token = z.string().regex(/^[0-9a-f]{32}$/);

const storedInputRoutes: FastifyPluginAsyncZod<{ runs: RunService }> = async (app, { runs }) => {
  app.get(
    '/v1/assets/:id/:token',
    {
      config: { public: true, optionalKey: true },
      schema: { summary: 'Download an uploaded asset', tags: ['assets'], params: z.object({ id: z.string().max(64), token }) },
    },
    async (req, reply) => {
      const owner = bearerKey(req) ? callerOf(req).scope : undefined;
      const { asset, bytes } = await runs.assets.content(req.params.id, { token: req.params.token, owner });
      return reply.header('content-type', asset.mime_type).header('cache-control', 'private, max-age=3600').send(bytes);
    },
  );
  app.get(
    '/v1/inputs/:run/:token/:index',
    {
      config: { public: true },
      schema: { summary: "Download a run's stored input image", tags: ['runs'], params: z.object({ run: z.string().max(64), token, index: z.coerce.number().int().min(0).max(15) }) },
    },
    async (req, reply) => {
      const { bytes, mime } = await runs.storedInput(req.params.run, req.params.token, req.params.index);
      return reply.header('content-type', mime ?? 'application/octet-stream').header('cache-control', 'private, max-age=3600').send(bytes);
    },
  );
};

export default storedInputRoutes;
