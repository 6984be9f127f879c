// Every error leaves as the contract's {code, message, errors[]}. Zod issues become 422
// INPUT_VALIDATION_FAILED with errors[] naming `input.image_urls[2]`-style fields; unknown fields are named.
// Storage that refuses a write is 507 STORAGE_FULL / STORAGE_FAILED naming what could not be stored.
// Framework messages may quote client input (a path, a content type): they are cut to a bounded length.
import fp from 'fastify-plugin';
import type { FastifyError, FastifyInstance } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { ServiceError, type FieldError } from '../errors.ts';
import { bounded, codeForStatus, noRouteMessage } from '../http/framework-errors.ts';
import { errorHeaders, STATUS_OF } from '../http/status.ts';
import { isStorageFailure, StorageWriteError } from '../storage/write-failure.ts';

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
    if (isStorageFailure(err)) {
      // A store that converts its failures names what it could not write; a raw one (the idempotency or
      // retention tables) is the run database.
      const failure = err instanceof StorageWriteError ? err : new StorageWriteError('run database', 'runs', err);
      req.log.error({ err: failure.message, store: failure.store }, 'storage refused a write');
      return reply.code(507).send({
        code: failure.kind === 'full' ? 'STORAGE_FULL' : 'STORAGE_FAILED',
        message: `${failure.message}; retry once storage accepts writes again`,
        errors: [{ field: failure.what, reason: failure.kind === 'full' ? 'storage is full' : 'storage failed' }],
      });
    }
    const status = (err as FastifyError).statusCode ?? 500;
    if (status === 413) {
      return reply.code(413).send({ code: 'PAYLOAD_TOO_LARGE', message: 'request body is too large', errors: [] });
    }
    if (status >= 400 && status < 500) {
      return reply.code(status).send({ code: codeForStatus(status), message: bounded(err.message), errors: [] });
    }
    req.log.error({ err }, 'unhandled error');
    return reply.code(500).send({ code: 'INTERNAL', message: 'internal error', errors: [] });
  });

  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send({ code: 'NOT_FOUND', message: noRouteMessage(req), errors: [] });
  });
});
