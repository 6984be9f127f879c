// The upload URL of every uploaded input (Runflow's asset uploads, fal's storage): PUT the raw bytes to
// /v1/asset-uploads/{id}/{token}, with no key (the token is the authorisation, as in a presigned URL). The
// asset's own terms are checked before a byte is read (unknown, used or expired URL), and the body is read
// as a stream under the asset's own bound, so a body over it is refused as soon as it crosses it.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { RunService } from '../runs/service.ts';
import { lingerAfterAnswer, readBodyWithin } from './upload-limit.ts';

const UploadParams = z.object({ id: z.string().max(64), token: z.string().regex(/^[0-9a-f]{32}$/) });

const uploadRoutes: FastifyPluginAsyncZod<{ runs: RunService }> = async (app, { runs }) => {
  // Raw bytes of any content type, left unread by the parser: the route reads them under the asset's bound.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null));
  app.put(
    '/v1/asset-uploads/:id/:token',
    {
      config: { public: true },
      schema: { summary: 'Upload the bytes of a reserved asset (no key: the URL is the authorisation)', tags: ['assets'], params: UploadParams },
    },
    async (req, reply) => {
      const { id, token } = req.params;
      const target = await runs.assets.uploadTarget(id, token).catch((err) => {
        // Refused unread: a body nobody wants is drained only briefly after the answer.
        lingerAfterAnswer(req.raw, reply.raw);
        throw err;
      });
      const bytes = await readBodyWithin(req, reply, target.size_bytes, 'body');
      await runs.assets.receive(id, token, bytes);
      return reply.code(200).send({ id, received: true });
    },
  );
};

export default uploadRoutes;
