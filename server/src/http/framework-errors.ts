// Errors raised before a request reaches a route (a malformed URL, an over-long path parameter, a request
// that timed out or could not be parsed) leave in the contract's {code, message, errors} shape like every
// other error, and never echo more than a bounded slice of what the client sent.
import http from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** Characters of client input (a path, a header value) an error message may quote. */
export const MAX_ECHO_CHARS = 120;

/** `text` cut to `max` characters with the cut marked, for quoting client input in messages. */
export function bounded(text: string, max = MAX_ECHO_CHARS): string {
  return text.length > max ? `${text.slice(0, max)}… (${text.length} characters)` : text;
}

/** What a request to a path no route serves is told (every not-found answer says the same). */
export function noRouteMessage(req: { method: string; url: string }): string {
  return `no route for ${bounded(req.method, 20)} ${bounded(req.url.split('?')[0])}`;
}

export interface ContractError {
  code: string;
  message: string;
  errors: { field: string; reason: string }[];
}

/** The contract's code for a bare HTTP status (framework and socket-level errors carry no code of ours). */
export function codeForStatus(status: number): string {
  switch (status) {
    case 400: return 'BAD_REQUEST';
    case 404: return 'NOT_FOUND';
    case 405: return 'METHOD_NOT_ALLOWED';
    case 408: return 'REQUEST_TIMEOUT';
    case 413: return 'PAYLOAD_TOO_LARGE';
    case 414: return 'URI_TOO_LONG';
    case 415: return 'UNSUPPORTED_MEDIA_TYPE';
    case 431: return 'HEADERS_TOO_LARGE';
    default: return status >= 500 ? 'INTERNAL' : 'BAD_REQUEST';
  }
}

/** Fastify's `frameworkErrors` option: bad URL encodings, over-long path parameters, constraint failures. */
export function renderFrameworkError(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  const path = bounded(req.raw.url?.split('?')[0] ?? '');
  let status: number;
  let body: ContractError;
  switch (err.code) {
    case 'FST_ERR_BAD_URL':
      status = 400;
      body = { code: 'BAD_URL', message: `the URL path is not validly percent-encoded: ${path}`, errors: [{ field: 'path', reason: 'invalid percent-encoding' }] };
      break;
    case 'FST_ERR_MAX_PARAM_LENGTH':
      status = 414;
      body = { code: 'URI_TOO_LONG', message: `a path parameter is too long: ${path}`, errors: [{ field: 'path', reason: 'too long' }] };
      break;
    default:
      status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
      body = { code: codeForStatus(status), message: status >= 500 ? 'internal error' : bounded(err.message), errors: [] };
      if (status >= 500) req.log.error({ err }, 'framework error');
  }
  void reply.code(status).header('content-type', 'application/json; charset=utf-8').send(JSON.stringify(body));
}

/**
 * Fastify's `clientErrorHandler`: Node found the request unparseable or too slow before any route ran
 * (timeouts of headers or body, oversized headers, malformed request lines). Answered on the raw socket.
 */
export function renderClientError(this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  let status = 400;
  let message = 'the request could not be parsed as HTTP';
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    message = 'the request (headers and body) did not arrive in time';
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    message = 'the request headers are too large';
  } else if (err.code === 'HPE_INVALID_CONTENT_LENGTH' || err.code === 'HPE_UNEXPECTED_CONTENT_LENGTH') {
    message = 'the Content-Length header is invalid';
  }
  this.log.debug({ err: { code: err.code, message: err.message } }, 'client error');
  const body = JSON.stringify({ code: codeForStatus(status), message, errors: [] } satisfies ContractError);
  // Node's own rule: never write into a response whose headers already went out.
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (socket.writable && !inFlight?.headersSent) {
    socket.write(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}

/** The two server options above, for the Fastify constructor. */
export const frameworkErrorOptions = {
  frameworkErrors: renderFrameworkError,
  clientErrorHandler: renderClientError,
};
