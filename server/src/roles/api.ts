// `kleinserve api`: a stateless replica. Runs live in Postgres, outputs in shared storage, work goes out
// through the regions' BullMQ queues. Any number of replicas can run behind a load balancer; each one
// hears every run's status changes through Postgres LISTEN/NOTIFY, so Prefer: wait works wherever a
// request lands.
import fs from 'node:fs';
import { pino, type Logger } from 'pino';
import { buildApp } from '../app.ts';
import { loadKeys } from '../auth/keys.ts';
import { CallbackDeliverer } from '../callbacks/delivery.ts';
import { ClusterEngineView } from '../cluster/engine-view.ts';
import { createClusterHardening } from '../cluster/hardening.ts';
import { ClusterMetrics } from '../cluster/metrics.ts';
import { Placement } from '../cluster/placement.ts';
import { relayProgress } from '../cluster/progress.ts';
import { RegionMonitor } from '../cluster/region-monitor.ts';
import type { RegionSpec } from '../cluster/regions.ts';
import { producerConnection, withTimeout } from '../cluster/redis.ts';
import { Sweeper } from '../cluster/sweeper.ts';
import { callbackSecret, type Config } from '../config.ts';
import { enqueueRun } from '../dispatch/bullmq-queue.ts';
import { loadHardeningConfig } from '../hardening/config.ts';
import { parseAllowlist } from '../images/index.ts';
import { Metrics } from '../plugins/metrics.ts';
import { RunEventBus } from '../runs/events.ts';
import { RunLifecycle } from '../runs/lifecycle.ts';
import { PostgresStore } from '../runs/postgres-store.ts';
import { callbackEnvelope } from '../runs/run-object.ts';
import { isTerminal } from '../runs/types.ts';
import { openObjectStore } from '../storage/open-store.ts';
import type { ClusterConfig } from './cluster-config.ts';

const announce = (obj: Record<string, unknown>) => process.stdout.write(JSON.stringify(obj) + '\n');

export async function createApi(cfg: Config, cluster: ClusterConfig, regions: RegionSpec[], logger?: Logger) {
  fs.mkdirSync(cfg.dataDir, { recursive: true });
  const log = logger ?? pino({ level: cfg.logLevel, base: { role: 'api' } }, pino.destination(2));
  const { ring, generated } = loadKeys(cfg.apiKeys, cfg.dataDir);
  if (generated) announce({ event: 'api_key_created', api_key: generated, note: 'shown once; only its hash is stored' });

  const monitor = new RegionMonitor(regions, { waitDeadlineMs: cluster.waitDeadlineMs, checkTimeoutMs: 1500 });
  const placementOpts = {
    regionQueueLimit: cluster.regionQueueLimit,
    backpressure: cluster.backpressure,
    globalQueueLimit: cluster.globalQueueLimit,
    retryAfterSeconds: cluster.retryAfterSeconds,
  };
  const placement = new Placement(() => [...monitor.states.values()], placementOpts);
  const store = await PostgresStore.open(cluster.databaseUrl, { regionOf: (id) => placement.regionOf(id) });
  const objects = openObjectStore(cluster.storage, cfg.fsync);
  const bus = new RunEventBus();
  const clusterMetrics = new ClusterMetrics(monitor);
  const engine = new ClusterEngineView(monitor, clusterMetrics);
  const allowlist = parseAllowlist(cfg.fetchAllowlist);
  let baseUrl = cfg.publicBaseUrl?.replace(/\/+$/, '') ?? '';

  const lifecycle = new RunLifecycle(store, bus, {
    maxAttempts: cfg.maxAttempts,
    logger: log,
    callbackBody: (run) => callbackEnvelope(run, baseUrl),
  });
  const deliverer = new CallbackDeliverer({
    store,
    secret: callbackSecret(cfg),
    logger: log.child({ part: 'callbacks' }),
    allowlist,
    maxAttempts: cfg.callbackMaxAttempts,
    baseDelayMs: cfg.callbackBaseDelayMs,
    timeoutMs: cfg.callbackTimeoutMs,
  });
  const sweeper = new Sweeper(store, monitor, placement, clusterMetrics, log.child({ part: 'sweeper' }), {
    intervalMs: cluster.sweepMs,
    staleMs: cluster.staleMs,
    batch: 200,
    placement: placementOpts,
  });

  // A run this replica just created goes straight to the region chosen during its POST; anything that
  // fails here is picked up by the sweeper (on this or any other replica).
  bus.subscribe('*', (ev) => {
    if (ev.type !== 'status') return;
    if (ev.run.callback_url && isTerminal(ev.run.status)) deliverer.kick();
    if (ev.run.status !== 'queued') return;
    const placed = placement.take(ev.run.id);
    const region = placed?.region ? monitor.region(placed.region) : undefined;
    if (!region) return;
    withTimeout(enqueueRun(region.queue, ev.run.id), 2000, 'enqueue').catch((err) => {
      clusterMetrics.enqueueErrors.inc({ region: region.spec.name });
      log.warn({ err: err.message, run_id: ev.run.id, region: region.spec.name }, 'enqueue failed; the sweeper will retry');
    });
  });

  // Quota counters shared by all replicas live in their own Redis (not a region's: a region outage must not
  // take admission down with it). Without KLEINSERVE_QUOTA_REDIS each replica counts on its own.
  const quotaRedisUrl = process.env.KLEINSERVE_QUOTA_REDIS;
  const hardening = createClusterHardening({
    cfg: loadHardeningConfig(),
    pool: store.pool,
    quotaRedis: quotaRedisUrl ? producerConnection(quotaRedisUrl) : null,
    objects,
    bus,
    logger: log,
    waitCapSeconds: cfg.waitCapSeconds,
  });
  const app = await buildApp({
    logger: log,
    lifecycle,
    engine,
    objects,
    keys: ring,
    metrics: new Metrics(store, engine, bus),
    intake: { objects, allowlist, limits: () => monitor.limits(), maxInputPixels: cfg.maxInputPixels, checkCallbacks: true },
    // Called before the run is inserted: the region is chosen here, and a full cluster refuses with 429.
    prime: (id) => void placement.place(id),
    baseUrl: () => baseUrl,
    waitCapSeconds: cfg.waitCapSeconds,
    bodyLimitBytes: cfg.bodyLimitBytes,
    hardening,
  });

  let relays: { disconnect(): void }[] = [];
  const start = async () => {
    relays = regions.map((r) => relayProgress(r.redisUrl, bus));
    await store.listen(
      (id) => void store.get(id).then((run) => run && bus.publish({ type: 'status', run })).catch(() => {}),
      (err) => log.warn({ err }, 'postgres listener dropped; reconnecting'),
    );
    await sweeper.sweep().catch((err) => log.warn({ err }, 'first sweep failed'));
    sweeper.start();
    deliverer.start();
    hardening.retention.start();
    await app.listen({ host: cfg.host, port: cfg.port });
    const port = (app.server.address() as { port: number }).port;
    if (!baseUrl) {
      const host = cfg.host === '0.0.0.0' || cfg.host === '::' ? '127.0.0.1' : cfg.host;
      baseUrl = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    }
    return { url: baseUrl, port };
  };
  const stop = async () => {
    sweeper.stop();
    deliverer.stop();
    await Promise.race([app.close(), new Promise((r) => setTimeout(r, 2000))]);
    await hardening.close();
    for (const r of relays) r.disconnect();
    await monitor.close();
    await store.close();
  };
  return { app, store, monitor, start, stop, logger: log };
}

export async function runApi(cfg: Config, cluster: ClusterConfig, regions: RegionSpec[]): Promise<void> {
  const node = await createApi(cfg, cluster, regions);
  const { url, port } = await node.start();
  announce({ event: 'listening', role: 'api', url, host: cfg.host, port, pid: process.pid, regions: regions.map((r) => r.name) });
  onSignals(node.logger, node.stop);
}

export function onSignals(logger: Logger, stop: () => Promise<void>): void {
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    await stop().catch((err) => logger.error({ err }, 'shutdown failed'));
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}
