// Errors in the shape a provider's own client parses. Every error leaves the shared handlers as the contract's
// {code, message, errors[{field, reason}]} (zod, auth, limits, storage, ServiceError alike); a surface that
// speaks another protocol re-renders that body for its routes here, renaming the canonical field names
// (input.image_urls[0], input.steps, callback_url) to its own, so one error path serves every surface.
import type { FastifyInstance } from 'fastify';
import type { FieldError } from '../errors.ts';

export interface ContractError {
  code: string;
  message: string;
  errors: FieldError[];
}

export interface ErrorShape {
  /** The surface's name for a canonical field (return it unchanged when it is already the surface's). */
  rename: (field: string) => string;
  /** The provider's body for this error (keep code/message/errors in it: contract clients read those). */
  render: (status: number, err: ContractError) => Record<string, unknown>;
}

/** Re-renders every error answered by the routes of `app` (a surface's plugin scope). */
export function shapeErrors(app: FastifyInstance, shape: ErrorShape): void {
  app.addHook('onSend', async (_req, reply, payload) => {
    if (reply.statusCode < 400 || typeof payload !== 'string') return payload;
    let body: unknown;
    try {
      body = JSON.parse(payload);
    } catch {
      return payload;
    }
    const b = body as Partial<ContractError> & { detail?: unknown };
    if (!b || typeof b !== 'object' || typeof b.code !== 'string' || b.detail !== undefined) return payload;
    const errors = (b.errors ?? []).map((e) => ({ field: shape.rename(e.field), reason: e.reason }));
    const message = errors.length ? errors.map((e) => `${e.field}: ${e.reason}`).join('; ') : String(b.message ?? '');
    return JSON.stringify(shape.render(reply.statusCode, { code: b.code, message, errors }));
  });
}
