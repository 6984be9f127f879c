// Errors of the run service and everything below HTTP. A `kind` says what went wrong in the service's own
// words; the HTTP layer (http/errors.ts) maps each kind to a status code and each surface renders the body
// in its clients' shape. Nothing here knows about HTTP.
export interface FieldError {
  field: string;
  reason: string;
}

export type ErrorKind =
  | 'bad_request'
  | 'unauthorized'
  | 'not_found'
  | 'gone'
  | 'conflict'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'invalid_input'
  | 'rate_limited'
  | 'internal'
  | 'unavailable'
  | 'timeout';

export class ServiceError extends Error {
  constructor(
    readonly kind: ErrorKind,
    /** Stable machine-readable code, e.g. RUN_NOT_FOUND. */
    readonly code: string,
    message: string,
    readonly errors: FieldError[] = [],
    /** Seconds after which a retry may succeed (rate limits, busy keys). */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

export const invalidInput = (errors: FieldError[]): ServiceError =>
  new ServiceError('invalid_input', 'INPUT_VALIDATION_FAILED', errors.map((e) => `${e.field}: ${e.reason}`).join('; '), errors);

export const runNotFound = (id: string): ServiceError => new ServiceError('not_found', 'RUN_NOT_FOUND', `run ${id} not found`);
