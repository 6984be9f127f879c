// The body limit for requests a route reads as a stream (multipart uploads, raw uploads whose bound depends on
// where they go), which Fastify's own bodyLimit does not cover: refused at once when the declared length is
// over the limit, or as soon as the bytes received cross it. Nothing more is kept, so the server holds at most
// the limit, never the whole upload.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ServiceError } from '../errors.ts';

/** How long, and how many more bytes, a refused upload is read and thrown away before its connection is cut. */
export const LINGER_MS = 2000;
export const LINGER_BYTES = 32 * 1024 * 1024;

/**
 * A lingering close, as nginx does it, for a body answered before it was read: once the answer is out, the rest
 * of the body is read and discarded for a bounded time and size, then the connection is cut. Closing at once
 * would reset a client that is still sending, and many clients (Node's among them) drop an answer they have
 * not yet read when a write fails; draining without a bound would let one client hold a connection forever.
 */
export function lingerAfterAnswer(raw: IncomingMessage, res: ServerResponse): void {
  res.once('finish', () => {
    if (raw.complete) return;
    const socket = raw.socket;
    const cut = () => socket.destroy();
    const timer = setTimeout(cut, LINGER_MS);
    let drained = 0;
    raw.removeAllListeners('data');
    raw.on('data', (chunk: Buffer) => {
      drained += chunk.length;
      if (drained > LINGER_BYTES) cut();
    });
    // Read whole after all: the connection stays as usable as any other (keep-alive).
    raw.once('end', () => clearTimeout(timer));
    socket.once('close', () => clearTimeout(timer));
    raw.resume();
  });
}

/** Methods Fastify never reads a body for. */
const BODYLESS = new Set(['GET', 'HEAD', 'TRACE']);

/** The most body bytes the request's route takes (the server's limit unless the route sets its own). */
const routeBodyLimit = (req: FastifyRequest): number => req.routeOptions.bodyLimit ?? req.server.initialConfig.bodyLimit ?? 0;

/**
 * What a request's body may hold: its declared length (never more than the route's limit: a longer body is
 * refused unread with a 413), the route's limit when chunked, 0 without a body.
 */
export function bodyBytesOf(req: FastifyRequest): number {
  if (BODYLESS.has(req.method)) return 0;
  const limit = routeBodyLimit(req);
  const declared = req.headers['content-length'];
  if (declared !== undefined) {
    const n = Number(declared);
    return Number.isFinite(n) && n > 0 ? Math.min(n, limit) : 0;
  }
  return req.headers['transfer-encoding'] !== undefined ? limit : 0;
}

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
export function limitUpload(
  req: FastifyRequest,
  reply: FastifyReply,
  maxBytes = routeBodyLimit(req),
  /** Names the body in the refusal's errors[] (a raw upload is one field); absent: no field errors. */
  field?: string,
): UploadLimit {
  const raw = req.raw;
  let reject!: (err: Error) => void;
  const exceeded = new Promise<never>((_, r) => (reject = r));
  exceeded.catch(() => {}); // raced by the caller; this keeps an unraced refusal from being unhandled
  const tooLarge = (what: string) => {
    lingerAfterAnswer(raw, reply.raw);
    const message = `request body ${what} the ${maxBytes}-byte limit`;
    return new ServiceError('payload_too_large', 'PAYLOAD_TOO_LARGE', message, field ? [{ field, reason: message }] : []);
  };

  const declared = Number(raw.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) throw tooLarge(`of ${declared} bytes exceeds`);
  let received = 0;
  const onData = (chunk: Buffer) => {
    received += chunk.length;
    if (received <= maxBytes) return;
    raw.off('data', onData);
    // Starve the parser and stop reading until the answer is out: nothing more is buffered for this request.
    raw.unpipe();
    raw.pause();
    reject(tooLarge('crossed'));
  };
  raw.on('data', onData);
  return { exceeded, stop: () => raw.off('data', onData) };
}

/**
 * A raw body the route's parser left unread, whole, under `maxBytes`: the 413 comes as soon as it is crossed
 * (or at once, from Content-Length), so at most the limit is ever held.
 */
export function readBodyWithin(req: FastifyRequest, reply: FastifyReply, maxBytes: number, field?: string): Promise<Buffer> {
  const raw = req.raw;
  if (raw.readableEnded) return Promise.resolve(Buffer.alloc(0));
  const limit = limitUpload(req, reply, maxBytes, field);
  const chunks: Buffer[] = [];
  const keep = (chunk: Buffer) => chunks.push(chunk);
  const body = new Promise<Buffer>((resolve, reject) => {
    raw.on('data', keep);
    raw.once('end', () => resolve(Buffer.concat(chunks)));
    raw.once('error', reject);
    raw.once('close', () => {
      if (!raw.readableEnded) reject(new ServiceError('bad_request', 'UPLOAD_INTERRUPTED', 'the connection closed before the whole body arrived'));
    });
  });
  return Promise.race([body, limit.exceeded]).finally(() => {
    limit.stop();
    raw.off('data', keep);
  });
}
