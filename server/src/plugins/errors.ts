// Every error leaves as the contract's {code, message, errors[]}. Zod issues become 422
// INPUT_VALIDATION_FAILED with errors[] naming `input.image_urls[2]`-style fields; unknown fields are named.
import fp from 'fastify-plugin';
import type { FastifyError, FastifyInstance } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { ServiceError, type FieldError } from '../errors.ts';
import { errorHeaders, STATUS_OF } from '../http/status.ts';

type ZodIssueLike = { instancePath: string; message: string; keyword: string; params: Record<string, unknown> };

/** `/input/image_urls/2` -> `input.image_urls[2]` */
export function fieldPath(segments: string[], prefix = ''): string {
  let out = prefix;
  for (const s of segments) {
    if (s === '') continue;
    out += /^\d+$/.test(s) ? `[${s}]` : out ? `.${s}` : s;
  }
  return out || '(body)';
}

export function zodIssuesToFieldErrors(issues: ZodIssueLike[], context: string | undefined): FieldError[] {
  const prefix = context === 'querystring' ? 'query' : context === 'params' ? 'path' : context === 'headers' ? 'header' : '';
  const out: FieldError[] = [];
  for (const issue of issues) {
    const segs = issue.instancePath.split('/');
    const base = fieldPath(segs, prefix);
    if (issue.keyword === 'unrecognized_keys') {
      for (const key of (issue.params.keys as string[]) ?? []) {
        out.push({ field: fieldPath([...segs, key], prefix), reason: 'unknown field' });
      }
    } else {
      out.push({ field: base, reason: issue.message });
    }
  }
  return out;
}

export default fp(async function errorsPlugin(app: FastifyInstance) {
  app.setErrorHandler((err: FastifyError | ServiceError, req, reply) => {
    if (err instanceof ServiceError) {
      reply.headers(errorHeaders(err));
      return reply.code(STATUS_OF[err.kind]).send({ code: err.code, message: err.message, errors: err.errors });
    }
    if (hasZodFastifySchemaValidationErrors(err)) {
      const errors = zodIssuesToFieldErrors(err.validation as unknown as ZodIssueLike[], err.validationContext);
      return reply.code(422).send({
        code: 'INPUT_VALIDATION_FAILED',
        message: errors.map((e) => `${e.field}: ${e.reason}`).join('; '),
        errors,
      });
    }
    const status = (err as FastifyError).statusCode ?? 500;
    if (status === 413) {
      return reply.code(413).send({ code: 'PAYLOAD_TOO_LARGE', message: 'request body is too large', errors: [] });
    }
    if (status >= 400 && status < 500) {
      const code = (err as FastifyError).code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? 'UNSUPPORTED_MEDIA_TYPE' : 'BAD_REQUEST';
      return reply.code(status).send({ code, message: err.message, errors: [] });
    }
    req.log.error({ err }, 'unhandled error');
    return reply.code(500).send({ code: 'INTERNAL', message: 'internal error', errors: [] });
  });

  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send({ code: 'NOT_FOUND', message: `no route for ${req.method} ${req.url.split('?')[0]}`, errors: [] });
  });
});
