// `kleinserve worker --region NAME --redis URL`: one per GPU, serving one model (its heartbeat names it, and it
// consumes only that model's queue). It starts and supervises its own engine
// (restarted when it crashes or hangs), heartbeats into its region's Redis, and runs the jobs of its
// region's queue through the same lifecycle and dispatcher as `serve`.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { HeartbeatWriter } from '../cluster/heartbeat.ts';
import { publishProgress } from '../cluster/progress.ts';
import { workerConnection } from '../cluster/redis.ts';
import type { RegionSpec } from '../cluster/regions.ts';
import type { Config } from '../config.ts';
import { RegionConsumer } from '../dispatch/region-consumer.ts';
import { localEngine } from '../engine/supervisor.ts';
import { servedModels } from '../models/served.ts';
import { adapterResolverFor } from '../adapters/resolver.ts';
import { PostgresStore } from '../runs/postgres-store.ts';
import { openObjectStore } from '../storage/open-store.ts';
import { guardProcess } from '../process-guard.ts';
import { announce, bootstrapRole, onSignals } from './bootstrap.ts';
import type { ClusterConfig } from './cluster-config.ts';

export async function runWorker(cfg: Config, cluster: ClusterConfig, region: RegionSpec): Promise<void> {
  const id = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  // Workers only write callbacks into the Postgres outbox (api replicas deliver them); their bodies need
  // public URLs, which in a cluster is the load balancer's address (PUBLIC_BASE_URL).
  const base = bootstrapRole('worker', cfg, { bindings: { region: region.name, worker: id } });
  const { logger } = base;
  const store = await PostgresStore.open(cluster.databaseUrl, { max: Math.max(4, cfg.concurrency + 2), onWriteFailure: base.storage.report });
  const objects = openObjectStore(cluster.storage, cfg.fsync, base.storage.report);
  const connection = workerConnection(region.redisUrl);
  // One model per worker (one engine per GPU); run one worker per model to serve several.
  const models = servedModels(cfg);
  if (models.length !== 1) throw new Error(`a worker serves one model; got ${models.length} (--model ${models.map((m) => m.checkpoint).join(', --model ')}): start one worker per model`);
  const served = models[0];
  const engine = localEngine(cfg, logger.child({ part: 'engine', model: served.id }), { checkpoint: served.checkpoint });
  const worker = new RegionConsumer({
    id,
    region: region.name,
    model: served.id,
    store,
    connection,
    engine,
    objects,
    logger,
    concurrency: Math.max(1, cfg.concurrency),
    maxAttempts: cfg.maxAttempts,
    leaseMs: cluster.leaseMs,
    stalledIntervalMs: cluster.stalledIntervalMs,
    callbackBody: base.callbackBody,
    preprocess: {
      objects,
      limits: () => engine.limits,
      maxInputPixels: cfg.maxInputPixels,
      fetch: {
        allowlist: base.allowlist,
        timeoutMs: cfg.fetchTimeoutMs,
        maxBytes: cfg.fetchMaxBytes,
        maxRedirects: cfg.fetchMaxRedirects,
      },
      // This machine's engine reads the adapters, so this worker fetches and caches them.
      adapters: adapterResolverFor(
        cfg,
        { allowlist: base.allowlist, timeoutMs: cfg.fetchTimeoutMs, maxBytes: cfg.fetchMaxBytes, maxRedirects: cfg.fetchMaxRedirects },
        () => engine.limits.max_lora_rank ?? null,
      ),
    },
  });
  const beatRedis = workerConnection(region.redisUrl);
  publishProgress(worker.bus, beatRedis);
  const heartbeat = new HeartbeatWriter(beatRedis, cluster.heartbeatMs, cluster.heartbeatTtlMs, () => ({
    id,
    region: region.name,
    pid: process.pid,
    concurrency: Math.max(1, cfg.concurrency),
    active: worker.active,
    engine: engine.state,
    limits: engine.limits,
    model: served.id,
    model_info: engine.status().model_info ?? null,
    at: Date.now(),
  }));

  engine.start();
  // Heartbeats start once the engine is ready, so the api only counts workers that can take runs.
  const beating = () => {
    if (engine.state !== 'ready') return;
    engine.off('state', beating);
    heartbeat.start();
  };
  engine.on('state', beating);
  beating();
  await worker.start();
  announce({ event: 'worker_started', id, region: region.name, model: served.id, pid: process.pid, concurrency: cfg.concurrency });

  guardProcess(logger);
  onSignals(logger, async () => {
    await heartbeat.stop(id);
    await worker.stop(cfg.shutdownGraceMs);
    await engine.stop();
    connection.disconnect();
    await store.close();
  });
}
