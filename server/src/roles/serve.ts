// The embedded `serve` role: SQLite runs, local-disk objects, a supervised local engine, one process.
import fs from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { buildApp } from './app.ts';
import { loadKeys } from './auth/keys.ts';
import { CallbackDeliverer } from './callbacks/delivery.ts';
import { callbackSecret, type Config } from './config.ts';
import { LocalDispatcher } from './dispatch/local-dispatcher.ts';
import { localEngine, type Engine } from './engine/supervisor.ts';
import { parseAllowlist } from './images/index.ts';
import { Metrics } from './plugins/metrics.ts';
import { RunEventBus } from './runs/events.ts';
import { RunLifecycle } from './runs/lifecycle.ts';
import { callbackEnvelope } from './runs/run-object.ts';
import { SqliteStore } from './runs/sqlite-store.ts';
import { isTerminal } from './runs/types.ts';
import { DiskStore } from './storage/disk-store.ts';
import { loadHardeningConfig } from './hardening/config.ts';
import { createEmbeddedHardening } from './hardening/index.ts';

/** Machine-readable lines on stdout (tests and scripts read them); logs go to stderr. */
const announce = (obj: Record<string, unknown>) => process.stdout.write(JSON.stringify(obj) + '\n');

export interface EmbeddedOptions {
  /** Tests pass a protocol-speaking fake; by default the Python engine is spawned and supervised. */
  engine?: Engine & { start(): void; stop(): Promise<void> };
  logger?: Logger;
}

/** Wires the embedded role. `start()` recovers, starts the engine and listens; `stop()` shuts down gracefully. */
export async function createEmbedded(cfg: Config, opts: EmbeddedOptions = {}) {
  fs.mkdirSync(cfg.dataDir, { recursive: true });
  const logger = opts.logger ?? pino({ level: cfg.logLevel, base: { role: 'serve' } }, pino.destination(2));
  const { ring, generated } = loadKeys(cfg.apiKeys, cfg.dataDir);
  if (generated && !opts.logger) {
    announce({ event: 'api_key_created', api_key: generated, note: 'shown once; only its hash is stored' });
    process.stderr.write(`\nkleinserve: created an API key (shown only this once):\n\n    ${generated}\n\n`);
  }

  const store = new SqliteStore(path.join(cfg.dataDir, 'runs.db'));
  const objects = new DiskStore(path.join(cfg.dataDir, 'objects'), cfg.fsync);
  const bus = new RunEventBus();
  const allowlist = parseAllowlist(cfg.fetchAllowlist);
  let baseUrl = cfg.publicBaseUrl?.replace(/\/+$/, '') ?? '';

  const deliverer = new CallbackDeliverer({
    store,
    secret: callbackSecret(cfg),
    logger: logger.child({ part: 'callbacks' }),
    allowlist,
    maxAttempts: cfg.callbackMaxAttempts,
    baseDelayMs: cfg.callbackBaseDelayMs,
    timeoutMs: cfg.callbackTimeoutMs,
  });
  const lifecycle = new RunLifecycle(store, bus, {
    maxAttempts: cfg.maxAttempts,
    logger,
    callbackBody: (run) => callbackEnvelope(run, baseUrl),
  });
  bus.subscribe('*', (ev) => {
    if (ev.type === 'status' && ev.run.callback_url && isTerminal(ev.run.status)) deliverer.kick();
  });

  const engine = opts.engine ?? localEngine(cfg, logger.child({ part: 'engine' }));
  const metrics = new Metrics(store, engine, bus);
  const limits = () => engine.limits;
  const dispatcher = new LocalDispatcher({
    lifecycle,
    engine,
    objects,
    logger,
    metrics,
    concurrency: Math.max(1, cfg.concurrency),
    preprocess: {
      objects,
      limits,
      maxInputPixels: cfg.maxInputPixels,
      fetch: { allowlist, timeoutMs: cfg.fetchTimeoutMs, maxBytes: cfg.fetchMaxBytes, maxRedirects: cfg.fetchMaxRedirects },
    },
  });

  const hardening = createEmbeddedHardening({
    cfg: loadHardeningConfig(),
    dbFile: path.join(cfg.dataDir, 'runs.db'),
    objects,
    bus,
    logger,
    waitCapSeconds: cfg.waitCapSeconds,
  });
  const app = await buildApp({
    logger,
    lifecycle,
    engine,
    objects,
    keys: ring,
    metrics,
    intake: { objects, allowlist, limits, maxInputPixels: cfg.maxInputPixels, checkCallbacks: true },
    prime: (id, decoded) => dispatcher.prime(id, decoded),
    baseUrl: () => baseUrl,
    waitCapSeconds: cfg.waitCapSeconds,
    bodyLimitBytes: cfg.bodyLimitBytes,
    hardening,
  });

  const start = async () => {
    const recovered = await lifecycle.recover();
    if (recovered) logger.warn({ recovered }, 'requeued runs left in flight by the previous process');
    engine.start();
    await app.listen({ host: cfg.host, port: cfg.port });
    const port = (app.server.address() as { port: number }).port;
    if (!baseUrl) {
      const host = cfg.host === '0.0.0.0' || cfg.host === '::' ? '127.0.0.1' : cfg.host;
      baseUrl = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    }
    dispatcher.start();
    deliverer.start();
    hardening.retention.start();
    return { url: baseUrl, port };
  };
  const stop = async () => {
    const closing = app.close();
    await dispatcher.stop(cfg.shutdownGraceMs);
    await Promise.race([closing, new Promise((r) => setTimeout(r, 2000))]);
    deliverer.stop();
    await hardening.close();
    await engine.stop();
    await store.close();
  };
  return { app, store, lifecycle, dispatcher, engine, generatedKey: generated, start, stop, logger };
}

export async function serve(cfg: Config): Promise<void> {
  const node = await createEmbedded(cfg);
  const { url, port } = await node.start();
  announce({ event: 'listening', url, host: cfg.host, port, pid: process.pid, data: cfg.dataDir });
  let shuttingDown = false;
  const shutdown = async (signal: string) => {
    if (shuttingDown) return;
    shuttingDown = true;
    node.logger.info({ signal }, 'shutting down: no new runs, finishing in-flight ones');
    await node.stop();
    node.logger.info('bye');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}
