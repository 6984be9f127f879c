// Replicate's Files API, as its client uploads a Buffer or Blob passed as an input: POST /v1/files (multipart:
// `content`, `metadata`) stores the bytes as an uploaded asset of the caller, and its urls.get is the asset's
// unguessable URL, which any run input accepts (read from the store, never fetched).
import { createHash } from 'node:crypto';
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { invalidInput, ServiceError } from '../../errors.ts';
import { callerOf } from '../../http/auth.ts';
import { limitUpload } from '../../http/upload-limit.ts';
import { MAX_ASSET_BYTES, type AssetRecord } from '../../runs/assets.ts';
import { assetUrl } from '../../runs/references.ts';
import type { SurfaceDeps } from '../surface.ts';
import { FileObjectSchema, PredictionParamsSchema } from './schemas.ts';
import { REPLICATE_ERROR_JSON_SCHEMA } from './schemas.ts';

const ERROR_DOCS = { errorSchema: REPLICATE_ERROR_JSON_SCHEMA };
const UPLOAD_DOCS = {
  ...ERROR_DOCS,
  requestBody: {
    required: true,
    content: {
      'multipart/form-data': {
        schema: {
          type: 'object',
          required: ['content'],
          properties: { content: { type: 'string', format: 'binary', description: 'the file' }, metadata: { type: 'string', description: 'a JSON object, kept with the file' } },
        },
      },
    },
  },
};

function fileObject(asset: AssetRecord, bytes: Buffer, metadata: Record<string, unknown>, base: string) {
  const md5 = createHash('md5').update(bytes).digest('hex');
  return {
    id: asset.id,
    name: asset.name,
    content_type: asset.mime_type,
    size: bytes.length,
    etag: md5,
    checksums: { sha256: createHash('sha256').update(bytes).digest('hex'), md5 },
    metadata,
    created_at: new Date(asset.created_at).toISOString(),
    expires_at: null,
    urls: { get: assetUrl(base, asset) },
  };
}

export async function fileRoutes(root: FastifyInstance, deps: SurfaceDeps): Promise<void> {
  const app = root.withTypeProvider<ZodTypeProvider>();
  await app.register(multipart, { limits: { fileSize: MAX_ASSET_BYTES, files: 2, fields: 4, parts: 6 } });

  app.post('/v1/files', { schema: { summary: 'Replicate Files API: upload an input file (multipart: content, metadata)', tags: ['replicate'], response: { 201: FileObjectSchema } }, config: { docs: UPLOAD_DOCS } }, async (req, reply) => {
    if (!req.isMultipart()) throw new ServiceError('unsupported_media_type', 'UNSUPPORTED_MEDIA_TYPE', 'send multipart/form-data with a content file part');
    // multipart's own limits bound each file, not the body: the route's body limit holds for the stream too
    const limit = limitUpload(req, reply);
    const upload = Promise.race([readUpload(req), limit.exceeded]).finally(limit.stop);
    const { content, metadata } = await upload.catch((err) => {
      // A malformed body (no boundary, truncated part) is the client's error, never a 500.
      if (err instanceof ServiceError || (err as { statusCode?: number }).statusCode) throw err;
      throw new ServiceError('bad_request', 'BAD_REQUEST', `malformed multipart body: ${(err as Error).message}`.slice(0, 200));
    });
    if (!content || content.bytes.length === 0) throw invalidInput([{ field: 'content', reason: 'missing or empty: send the file as the content part' }]);
    const owner = callerOf(req).scope;
    const asset = await deps.runs.assets.create(owner, { name: content.name, mime_type: content.mime, size_bytes: content.bytes.length });
    await deps.runs.assets.receive(asset.id, asset.token, content.bytes);
    const ready = await deps.runs.assets.confirm(owner, asset.id);
    return reply.code(201).send(fileObject(ready, content.bytes, metadata, deps.baseUrl()));
  });

  app.get(
    '/v1/files/:id',
    { schema: { summary: 'Replicate Files API: read an uploaded file', tags: ['replicate'], params: PredictionParamsSchema, response: { 200: FileObjectSchema } }, config: { docs: ERROR_DOCS } },
    async (req) => {
      const { asset, bytes } = await deps.runs.assets.content(req.params.id, { owner: callerOf(req).scope });
      return fileObject(asset, bytes, {}, deps.baseUrl());
    },
  );
}

async function readUpload(req: FastifyRequest) {
  let content: { bytes: Buffer; name: string; mime: string } | null = null;
  let metadata: Record<string, unknown> = {};
  for await (const part of req.parts()) {
    if (part.type === 'file') {
      const bytes = await part.toBuffer();
      if (part.fieldname === 'content') content = { bytes, name: part.filename || 'upload', mime: part.mimetype || 'application/octet-stream' };
      else if (part.fieldname === 'metadata') metadata = parseMetadata(bytes.toString('utf8'));
      else throw invalidInput([{ field: part.fieldname, reason: 'unknown part; send content (the file) and optionally metadata (JSON)' }]);
    } else if (part.fieldname === 'metadata') {
      metadata = parseMetadata(String(part.value));
    } else {
      throw invalidInput([{ field: part.fieldname, reason: 'unknown field; send content (the file) and optionally metadata (JSON)' }]);
    }
  }
  return { content, metadata };
}

function parseMetadata(text: string): Record<string, unknown> {
  try {
    const v = JSON.parse(text || '{}');
    if (v && typeof v === 'object' && !Array.isArray(v)) return v;
  } catch {
    /* named below */
  }
  throw invalidInput([{ field: 'metadata', reason: 'must be a JSON object' }]);
}
