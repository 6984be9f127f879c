// Runflow's asset uploads, the SDK's browser flow: POST /v1/asset-uploads reserves an asset and answers an
// upload URL; the bytes go to that URL with a PUT that needs no key (http/uploads.ts: its token is the
// authorisation, like a presigned URL); POST /v1/asset-uploads/{id}/confirmations makes it an asset whose
// `url` (or runflow://assets/{id}) any run input accepts.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { callerOf } from '../../http/auth.ts';
import { MAX_ASSET_BYTES, type AssetRecord } from '../../runs/assets.ts';
import { assetUrl, uploadUrl } from '../../runs/references.ts';
import type { SurfaceDeps } from '../surface.ts';
import { errorResponses } from './schemas.ts';

const UploadSessionBody = z.strictObject({
  filename: z.string().trim().min(1).max(255),
  mime_type: z.string().regex(/^image\/[a-z0-9.+-]+$/i, 'must be an image/* type'),
  size_bytes: z.int().min(1).max(MAX_ASSET_BYTES, `must be at most ${MAX_ASSET_BYTES} bytes (50 MB)`),
  folder_id: z.string().nullable().optional().describe('accepted for the SDK; there are no folders here'),
});
const UploadSessionSchema = z.object({ asset_id: z.string(), upload_url: z.string(), expires_at: z.string().nullable() });
const AssetSchema = z.object({
  id: z.string(),
  name: z.string(),
  url: z.string().describe('unguessable URL of the bytes; pass it (or runflow://assets/{id}) as an image input'),
  ref: z.string(),
  thumbnail_url: z.string().nullable(),
  mime_type: z.string(),
  size_bytes: z.int(),
  created_at: z.string(),
});
const IdParams = z.object({ id: z.string().max(64) });

export const assetRoutes: FastifyPluginAsyncZod<SurfaceDeps> = async (app, { runs, baseUrl }) => {
  const render = (a: AssetRecord) => ({
    id: a.id,
    name: a.name,
    url: assetUrl(baseUrl(), a),
    ref: `runflow://assets/${a.id}`,
    thumbnail_url: null,
    mime_type: a.mime_type,
    size_bytes: a.size_bytes,
    created_at: new Date(a.created_at).toISOString(),
  });

  app.post(
    '/v1/asset-uploads',
    { schema: { summary: 'Reserve an asset upload: answers the URL to PUT the bytes to', tags: ['assets'], body: UploadSessionBody, response: { 201: UploadSessionSchema, ...errorResponses } } },
    async (req, reply) => {
      const { filename, mime_type, size_bytes } = req.body;
      const asset = await runs.assets.create(callerOf(req).scope, { name: filename, mime_type, size_bytes });
      return reply.code(201).send({ asset_id: asset.id, upload_url: uploadUrl(baseUrl(), asset), expires_at: null });
    },
  );

  app.post(
    '/v1/asset-uploads/:id/confirmations',
    {
      schema: {
        summary: 'Confirm an uploaded asset',
        tags: ['assets'],
        params: IdParams,
        body: z.object({ folder_id: z.string().nullable().optional() }).optional(),
        response: { 201: AssetSchema, ...errorResponses },
      },
    },
    async (req, reply) => reply.code(201).send(render(await runs.assets.confirm(callerOf(req).scope, req.params.id))),
  );
};
