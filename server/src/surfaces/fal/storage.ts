// fal's storage, as `@fal-ai/client` uses it for a Blob or File in an input (and for fal.storage.upload): it POSTs
// {content_type, file_name} to https://rest.fal.ai/storage/upload/initiate (here through the proxy), PUTs the
// bytes to the upload_url it gets back with its own fetch, and sends the file_url as the input. Both URLs are
// those of a presigned asset (runs/assets.ts): the shared upload URL, taking one image within 15 minutes, and the
// asset's URL, which runs of the same key read from the store (never fetched) and which only that key may read.
// Files over 90 MB, which the client uploads in parts through initiate-multipart, are over the image limit: the
// proxy answers that 413 (multipartUploadRefusal) without a route of its own.
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { ServiceError } from '../../errors.ts';
import { callerOf } from '../../http/auth.ts';
import { MAX_PRESIGNED_BYTES } from '../../runs/assets.ts';
import { assetUrl, uploadUrl } from '../../runs/references.ts';
import type { SurfaceDeps } from '../surface.ts';
import { FAL_ERROR_JSON_SCHEMA, FalUploadInitiateSchema, FalUploadQuerySchema, FalUploadTargetSchema } from './schemas.ts';

const ERROR_DOCS = { errorSchema: FAL_ERROR_JSON_SCHEMA };
const LIMIT = `${MAX_PRESIGNED_BYTES / (1024 * 1024)} MiB`;

export async function falStorage(root: FastifyInstance, deps: SurfaceDeps): Promise<void> {
  const app = root.withTypeProvider<ZodTypeProvider>();
  app.post(
    '/fal/storage/upload/initiate',
    {
      schema: {
        summary: `fal storage: start an upload of an input image (up to ${LIMIT}); answers where to PUT it and the URL to pass as input`,
        tags: ['fal'],
        body: FalUploadInitiateSchema,
        querystring: FalUploadQuerySchema,
        response: { 200: FalUploadTargetSchema },
      },
      config: { docs: ERROR_DOCS },
    },
    async (req) => {
      const asset = await deps.runs.assets.createPresigned(callerOf(req).scope, { name: req.body.file_name, mime_type: req.body.content_type });
      return { upload_url: uploadUrl(deps.baseUrl(), asset), file_url: assetUrl(deps.baseUrl(), asset) };
    },
  );
}

/** fal's client uploads files over 90 MB in parts (initiate-multipart): all are over the image limit. */
export function multipartUploadRefusal(): ServiceError {
  const reason = `the file is over 90 MB (the fal client uploads such files in parts); this server takes input images of at most ${LIMIT}`;
  return new ServiceError('payload_too_large', 'PAYLOAD_TOO_LARGE', reason, [{ field: 'file', reason }]);
}
