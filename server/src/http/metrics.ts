// GET /metrics (Prometheus text) and the HTTP latency histogram; the engine's own metrics are appended so
// one scrape sees both planes. The `route` label is the route's template (`/v1/runs/:id`), or a route's own
// `config.metricsRoute` where a plugin registers one route per file (the playground's hashed assets), so
// its cardinality is bounded by the code, not by traffic. A server bound beyond loopback requires an API key
// on /metrics unless told otherwise: run counts, queue depth and engine state are not for everyone.
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import type { EngineStatusView } from '../engine/engine.ts';
import type { Metrics } from '../metrics.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The `route` label of this route's requests, when its template would not bound the label's values. */
    metricsRoute?: string;
  }
}

export type MetricsKeySetting = 'auto' | 'yes' | 'no';

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost|::ffff:127\.\d+\.\d+\.\d+)$/i;

/** `auto`: a key is required unless the server listens on loopback only. */
export function metricsRequireKey(setting: MetricsKeySetting, host: string): boolean {
  return setting === 'yes' || (setting === 'auto' && !LOOPBACK.test(host.replace(/^\[|\]$/g, '')));
}

export default fp(async function metricsPlugin(app: FastifyInstance, opts: { metrics: Metrics; engine: EngineStatusView; requireKey?: boolean }) {
  const { metrics, engine } = opts;
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.config?.metricsRoute ?? req.routeOptions.url ?? 'unmatched';
    metrics.http.observe({ method: req.method, route, code: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });
  app.get('/metrics', { config: { public: !opts.requireKey }, schema: { hide: true } }, async (_req, reply) => {
    const [own, engineText] = await Promise.all([metrics.registry.metrics(), engine.metricsText()]);
    reply.header('content-type', metrics.registry.contentType);
    return own + (engineText ? '\n' + engineText : '');
  });
});
