// The HTTP meaning of each service error kind, and the headers an error carries on the wire.
import type { ErrorKind, ServiceError } from '../errors.ts';

export const STATUS_OF: Record<ErrorKind, number> = {
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  gone: 410,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  invalid_input: 422,
  rate_limited: 429,
  internal: 500,
  unavailable: 503,
  timeout: 504,
};

export function errorHeaders(err: ServiceError): Record<string, string> {
  const headers: Record<string, string> = {};
  if (err.retryAfterSeconds !== undefined) headers['retry-after'] = String(err.retryAfterSeconds);
  if (err.kind === 'unauthorized') headers['www-authenticate'] = 'Bearer';
  return headers;
}
