// The embedded `serve` role: SQLite runs, local-disk objects, a supervised local engine per served model, one process.
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import { adapterResolverFor } from '../adapters/resolver.ts';
import { LocalAdmission } from '../dispatch/local-admission.ts';
import { LocalDispatcher } from '../dispatch/local-dispatcher.ts';
import type { Engine } from '../engine/engine.ts';
import { ModelEngines } from '../engine/model-engines.ts';
import { localEngines } from '../engine/supervisor.ts';
import { modelOfRun, runModelIds } from '../models/registry.ts';
import { servedModels } from '../models/served.ts';
import { Metrics } from '../metrics.ts';
import { loadPolicyConfig } from '../policy-config.ts';
import { RunEventBus } from '../runs/events.ts';
import { RunLifecycle } from '../runs/lifecycle.ts';
import { SqliteStore } from '../runs/sqlite-store.ts';
import { DiskStore } from '../storage/disk-store.ts';
import { objectStoreProbe, sqliteProbe } from '../storage/probes.ts';
import { guardProcess } from '../process-guard.ts';
import { embeddedPolicy } from './backends.ts';
import { announce, bootstrapRole, buildApiServer, callbackDeliverer, logWhenReady, onSignals, roleKeys } from './bootstrap.ts';

export interface EmbeddedOptions {
  /** Tests pass a protocol-speaking fake; by default the Python engine is spawned and supervised. */
  engine?: Engine & { start(): void; stop(): Promise<void> };
  logger?: Logger;
}

/** Wires the embedded role. `start()` recovers, starts the engine and listens; `stop()` shuts down gracefully. */
export async function createEmbedded(cfg: Config, opts: EmbeddedOptions = {}) {
  const base = bootstrapRole('serve', cfg, { logger: opts.logger });
  const { logger } = base;
  const { ring, generated } = roleKeys(cfg, opts.logger !== undefined);

  const dbFile = path.join(cfg.dataDir, 'runs.db');
  const store = new SqliteStore(dbFile, base.storage.report);
  const objects = new DiskStore(path.join(cfg.dataDir, 'objects'), cfg.fsync, base.storage.report);
  const probeRuns = sqliteProbe(dbFile);
  const bus = new RunEventBus();
  const lifecycle = new RunLifecycle(store, bus, { maxAttempts: cfg.maxAttempts, logger, callbackBody: base.callbackBody });
  const deliverer = callbackDeliverer(cfg, base, store, bus);

  // One engine per served model; a test's fake engine serves the first (only) model.
  const engine = opts.engine
    ? new ModelEngines(new Map([[servedModels(cfg)[0].id, opts.engine]]))
    : localEngines(cfg, logger.child({ part: 'engine' }));
  const metrics = new Metrics(store, engine, bus);
  const fetch = { allowlist: base.allowlist, timeoutMs: cfg.fetchTimeoutMs, maxBytes: cfg.fetchMaxBytes, maxRedirects: cfg.fetchMaxRedirects };
  // The engine reads adapters from this machine's disk: intake resolves them (422s) and dispatch hands them over.
  const adapters = adapterResolverFor(cfg, fetch, () => engine.limits.max_lora_rank ?? null, metrics.registry);
  // Each engine claims only its model's runs, so a run never reaches another model's engine.
  const dispatchers = new Map(
    [...engine.engines].map(([model, modelEngine]) => [
      model,
      new LocalDispatcher({
        lifecycle,
        engine: modelEngine,
        objects,
        logger: engine.engines.size === 1 ? logger : logger.child({ model }),
        metrics,
        concurrency: Math.max(1, cfg.concurrency),
        models: runModelIds(model),
        preprocess: {
          objects,
          limits: () => modelEngine.limits,
          maxInputPixels: cfg.maxInputPixels,
          fetch,
          adapters,
        },
      }),
    ]),
  );
  const dispatcher = dispatchers.values().next().value!;

  const policy = embeddedPolicy({ cfg: loadPolicyConfig(), dbFile, objects, bus, logger, waitCapSeconds: cfg.waitCapSeconds });
  const { app, runs } = await buildApiServer(cfg, base, {
    lifecycle,
    engine,
    objects,
    admission: new LocalAdmission(dispatchers),
    policy,
    keys: ring,
    metrics,
    adapters,
  });

  const start = async () => {
    const recovered = await lifecycle.recover();
    if (recovered) logger.warn({ recovered }, 'requeued runs left in flight by the previous process');
    // Runs queued for a model this start no longer serves would wait forever: no dispatcher here claims them.
    const served = [...engine.engines.keys()];
    const unserved = await lifecycle.failUnserved(served.flatMap(runModelIds), (run) => notServedHere(run.model_id, served));
    if (unserved) logger.warn({ failed: unserved, serves: served }, 'failed queued runs of models this node no longer serves');
    engine.start();
    await app.listen({ host: cfg.host, port: cfg.port });
    const port = (app.server.address() as { port: number }).port;
    const url = base.listening(cfg.host, port);
    for (const d of dispatchers.values()) d.start();
    deliverer.start();
    policy.retention.start();
    base.storage.start([objectStoreProbe(objects), probeRuns]);
    return { url, port };
  };
  const stop = async () => {
    const closing = app.close();
    await Promise.all([...dispatchers.values()].map((d) => d.stop(cfg.shutdownGraceMs)));
    await Promise.race([closing, new Promise((r) => setTimeout(r, 2000))]);
    deliverer.stop();
    base.storage.stop();
    probeRuns.close();
    runs.close();
    await policy.close();
    await engine.stop();
    await store.close();
  };
  return { app, store, lifecycle, dispatcher, dispatchers, engine, runs, generatedKey: generated, start, stop, logger };
}

/** Why a run of a model this node does not serve can never start here. */
function notServedHere(runModelId: string, served: string[]): string {
  return `${modelOfRun(runModelId)} is not served by this node (it serves ${served.join(', ')}): ` +
    'the server was restarted without it while the run waited';
}

export async function serve(cfg: Config): Promise<void> {
  const node = await createEmbedded(cfg);
  const { url, port } = await node.start();
  announce({ event: 'listening', url, host: cfg.host, port, pid: process.pid, data: cfg.dataDir });
  logWhenReady(node.logger, node.engine, url);
  guardProcess(node.logger);
  onSignals(node.logger, node.stop);
}
