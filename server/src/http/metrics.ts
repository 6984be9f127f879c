// GET /metrics (Prometheus text) and the HTTP latency histogram; the engine's own metrics are appended so
// one scrape sees both planes.
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import type { EngineStatusView } from '../engine/engine.ts';
import type { Metrics } from '../metrics.ts';

export default fp(async function metricsPlugin(app: FastifyInstance, opts: { metrics: Metrics; engine: EngineStatusView }) {
  const { metrics, engine } = opts;
  app.addHook('onResponse', async (req, reply) => {
    metrics.http.observe(
      { method: req.method, route: req.routeOptions.url ?? 'unmatched', code: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });
  app.get('/metrics', { config: { public: true }, schema: { hide: true } }, async (_req, reply) => {
    const [own, engineText] = await Promise.all([metrics.registry.metrics(), engine.metricsText()]);
    reply.header('content-type', metrics.registry.contentType);
    return own + (engineText ? '\n' + engineText : '');
  });
});
