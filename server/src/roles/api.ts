// `kleinserve api`: a stateless replica. Runs live in Postgres, outputs in shared storage, work goes out
// through the regions' BullMQ queues. Any number of replicas can run behind a load balancer; each one
// hears every run's status changes through Postgres LISTEN/NOTIFY, so Prefer: wait works wherever a
// request lands.
import type { Logger } from 'pino';
import { ClusterEngineView } from '../cluster/engine-view.ts';
import { ClusterMetrics } from '../cluster/metrics.ts';
import { Placement } from '../cluster/placement.ts';
import { relayProgress } from '../cluster/progress.ts';
import { RegionAdmission } from '../cluster/region-admission.ts';
import { RegionMonitor } from '../cluster/region-monitor.ts';
import type { RegionSpec } from '../cluster/regions.ts';
import { producerConnection } from '../cluster/redis.ts';
import { Sweeper } from '../cluster/sweeper.ts';
import type { Config } from '../config.ts';
import { Metrics } from '../metrics.ts';
import { loadPolicyConfig } from '../policy-config.ts';
import { RunEventBus } from '../runs/events.ts';
import { RunLifecycle } from '../runs/lifecycle.ts';
import { PostgresStore } from '../runs/postgres-store.ts';
import { openObjectStore } from '../storage/open-store.ts';
import { objectStoreProbe, postgresProbe } from '../storage/probes.ts';
import { guardProcess } from '../process-guard.ts';
import { clusterPolicy } from './backends.ts';
import { announce, bootstrapRole, buildApiServer, callbackDeliverer, logWhenReady, onSignals, roleKeys } from './bootstrap.ts';
import type { ClusterConfig } from './cluster-config.ts';

export async function createApi(cfg: Config, cluster: ClusterConfig, regions: RegionSpec[], logger?: Logger) {
  const base = bootstrapRole('api', cfg, { logger });
  const log = base.logger;
  const { ring } = roleKeys(cfg, false);

  const monitor = new RegionMonitor(regions, { waitDeadlineMs: cluster.waitDeadlineMs, checkTimeoutMs: 1500 });
  const placementOpts = {
    regionQueueLimit: cluster.regionQueueLimit,
    backpressure: cluster.backpressure,
    globalQueueLimit: cluster.globalQueueLimit,
    retryAfterSeconds: cluster.retryAfterSeconds,
  };
  const placement = new Placement(() => [...monitor.states.values()], placementOpts);
  const store = await PostgresStore.open(cluster.databaseUrl, { onWriteFailure: base.storage.report });
  const objects = openObjectStore(cluster.storage, cfg.fsync, base.storage.report);
  const bus = new RunEventBus();
  const clusterMetrics = new ClusterMetrics(monitor);
  const engine = new ClusterEngineView(monitor, clusterMetrics);

  const lifecycle = new RunLifecycle(store, bus, { maxAttempts: cfg.maxAttempts, logger: log, callbackBody: base.callbackBody });
  const deliverer = callbackDeliverer(cfg, base, store, bus);
  const sweeper = new Sweeper(store, lifecycle, monitor, placement, clusterMetrics, log.child({ part: 'sweeper' }), {
    intervalMs: cluster.sweepMs,
    staleMs: cluster.staleMs,
    batch: 200,
    placement: placementOpts,
    unservedWaitMs: cluster.unservedWaitMs,
  });

  const quotaRedisUrl = process.env.KLEINSERVE_QUOTA_REDIS;
  const policy = clusterPolicy({
    cfg: loadPolicyConfig(),
    pool: store.pool,
    quotaRedis: quotaRedisUrl ? producerConnection(quotaRedisUrl) : null,
    objects,
    bus,
    logger: log,
    waitCapSeconds: cfg.waitCapSeconds,
  });
  const { app, runs } = await buildApiServer(cfg, base, {
    lifecycle,
    engine,
    objects,
    admission: new RegionAdmission(placement, monitor, clusterMetrics, log),
    policy,
    keys: ring,
    metrics: new Metrics(store, engine, bus),
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
    policy.retention.start();
    base.storage.start([objectStoreProbe(objects), postgresProbe(store.pool)]);
    await app.listen({ host: cfg.host, port: cfg.port });
    const port = (app.server.address() as { port: number }).port;
    return { url: base.listening(cfg.host, port), port };
  };
  const stop = async () => {
    sweeper.stop();
    deliverer.stop();
    base.storage.stop();
    await Promise.race([app.close(), new Promise((r) => setTimeout(r, 2000))]);
    runs.close();
    await policy.close();
    for (const r of relays) r.disconnect();
    await monitor.close();
    await store.close();
  };
  return { app, store, monitor, engine, start, stop, logger: log };
}

export async function runApi(cfg: Config, cluster: ClusterConfig, regions: RegionSpec[]): Promise<void> {
  const node = await createApi(cfg, cluster, regions);
  const { url, port } = await node.start();
  announce({ event: 'listening', role: 'api', url, host: cfg.host, port, pid: process.pid, regions: regions.map((r) => r.name) });
  logWhenReady(node.logger, node.engine, url);
  guardProcess(node.logger);
  onSignals(node.logger, node.stop);
}
