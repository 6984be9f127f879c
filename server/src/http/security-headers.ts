// Browser-facing hardening on every response: no MIME sniffing, no referrer leaking output URLs, and for
// HTML (the playground) a strict Content-Security-Policy: only this origin's scripts, styles and API, no
// inline code, no plugins, no framing; images from anywhere (see img-src).
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';

export const PLAYGROUND_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  // Images cannot run code; previews of image URLs the user adds, and outputs served from another origin
  // (PUBLIC_BASE_URL behind a CDN, presigned S3 URLs in cluster mode), must still show.
  "img-src 'self' data: blob: https: http:",
  "connect-src 'self'",
  "font-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "object-src 'none'",
].join('; ');

export default fp(async function securityHeaders(app: FastifyInstance) {
  app.addHook('onSend', async (_req, reply, payload) => {
    reply.header('x-content-type-options', 'nosniff');
    reply.header('referrer-policy', 'no-referrer');
    if (String(reply.getHeader('content-type') ?? '').startsWith('text/html')) {
      reply.header('content-security-policy', PLAYGROUND_CSP);
      reply.header('x-frame-options', 'DENY');
    }
    return payload;
  });
});
