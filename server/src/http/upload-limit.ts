// The body limit for requests a route reads as a stream (multipart uploads), which Fastify's own bodyLimit
// does not cover: refused at once when the declared length is over the limit, or as soon as the bytes
// received cross it. Reading then stops, so the server holds at most the limit, never the whole upload.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ServiceError } from '../errors.ts';

export interface UploadLimit {
  /** Rejects with a 413 ServiceError once the body crosses the limit; never resolves. */
  exceeded: Promise<never>;
  /** Stops counting (call once the body has been read). */
  stop(): void;
}

/**
 * Call right before starting to read the body (same tick). Throws the 413 at once when the declared
 * Content-Length is over the limit, so not a byte of such a body is read.
 */
export function limitUpload(req: FastifyRequest, reply: FastifyReply, maxBytes = req.routeOptions.bodyLimit ?? req.server.initialConfig.bodyLimit ?? 0): UploadLimit {
  const raw = req.raw;
  let reject!: (err: Error) => void;
  const exceeded = new Promise<never>((_, r) => (reject = r));
  exceeded.catch(() => {}); // raced by the caller; this keeps an unraced refusal from being unhandled
  const tooLarge = (what: string) => {
    // The rest of the upload is not read: close the connection after the answer instead of draining it.
    reply.header('connection', 'close');
    return new ServiceError('payload_too_large', 'PAYLOAD_TOO_LARGE', `request body ${what} the ${maxBytes}-byte limit`);
  };

  const declared = Number(raw.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) throw tooLarge(`of ${declared} bytes exceeds`);
  let received = 0;
  const onData = (chunk: Buffer) => {
    received += chunk.length;
    if (received <= maxBytes) return;
    raw.off('data', onData);
    // Starve the parser and stop reading from the socket: nothing more is buffered for this request.
    raw.unpipe();
    raw.pause();
    reject(tooLarge('crossed'));
  };
  raw.on('data', onData);
  return { exceeded, stop: () => raw.off('data', onData) };
}
