// Fastify/Node server options that bound what one client can hold: header size, time to send the request
// (slow-loris), idle keep-alive sockets. The socket idle timeout must outlast the longest quiet response,
// a `Prefer: wait` hold, or the server would cut its own held requests.
import type { FastifyServerOptions } from 'fastify';
import type { PolicyConfig } from '../policy-config.ts';
import { frameworkErrorOptions } from './framework-errors.ts';
import { redactingChildLogger } from './log-redaction.ts';

export function httpServerOptions(cfg: PolicyConfig, waitCapSeconds: number): Partial<FastifyServerOptions> {
  return {
    http: { maxHeaderSize: cfg.maxHeaderBytes, headersTimeout: cfg.headersTimeoutMs, requestTimeout: cfg.requestTimeoutMs, connectionsCheckingInterval: 1000 },
    // ^ how often Node enforces the two timeouts above; its 30 s default lets a slow client linger.
    requestTimeout: cfg.requestTimeoutMs,
    connectionTimeout: Math.max(120_000, waitCapSeconds * 1000 + 30_000),
    keepAliveTimeout: cfg.keepAliveTimeoutMs,
    // No client needs hundreds of requests on one socket; bounding it spreads load across connections.
    maxRequestsPerSocket: 1000,
    // Long path parameters reach the route's own validation (a 422 naming the field) instead of a bare 414;
    // the header size limit still bounds the whole URL.
    routerOptions: { maxParamLength: 4096 },
    // Not a limit, but a server option too: request lines are logged with output tokens masked.
    childLoggerFactory: redactingChildLogger,
    // Errors raised before routing (bad URL encoding, slow or unparseable requests) in the contract shape.
    ...frameworkErrorOptions,
  } as Partial<FastifyServerOptions>;
}
