// One log line per request, when it ends (Fastify's own logging writes two: on arrival and on completion).
// Probes that pollers send every few seconds (health, readiness, metrics) log at debug, so a monitored
// server's info log still shows what clients did. URLs go through the redacting `req` serializer.
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';

const POLLED = new Set(['/v1/health', '/v1/readiness', '/metrics']);

export default fp(async function requestLog(app: FastifyInstance) {
  app.addHook('onResponse', async (req, reply) => {
    const level = POLLED.has(req.routeOptions.url ?? '') ? 'debug' : 'info';
    req.log[level]({ req, res: { statusCode: reply.statusCode }, responseTime: Math.round(reply.elapsedTime * 10) / 10 }, 'request completed');
  });
});
