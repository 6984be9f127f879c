// What every role (`serve`, `api`, `worker`) sets up the same way: the data dir, logging, API keys, the
// public base URL, callback bodies and delivery, and graceful shutdown on signals. Roles differ only in
// the backends they plug in (run store, object store, admission, engine).
import type { AdapterResolver } from '../adapters/resolver.ts';
import fs from 'node:fs';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { buildApp } from '../app.ts';
import { hashKey, keyId, loadKeys, type KeyRing } from '../auth/keys.ts';
import { DOCS_PATH } from '../http/docs-page.ts';
import { metricsRequireKey } from '../http/metrics.ts';
import { CallbackDeliverer } from '../callbacks/delivery.ts';
import { falWebhookJwks, standardWebhooksSecret } from '../callbacks/signing.ts';
import { callbackSecret, type Config } from '../config.ts';
import type { EngineStatusView } from '../engine/engine.ts';
import { parseAllowlist, type FetchAllowlist } from '../images/index.ts';
import type { Metrics } from '../metrics.ts';
import { checkBodyBudget } from '../policy-config.ts';
import type { Admission } from '../runs/admission.ts';
import type { RunEventBus } from '../runs/events.ts';
import type { RunLifecycle } from '../runs/lifecycle.ts';
import { AssetLibrary } from '../runs/assets.ts';
import { InputReferences } from '../runs/references.ts';
import { RunService } from '../runs/service.ts';
import type { DeliveryStore } from '../runs/store.ts';
import { isTerminal, type RunRecord } from '../runs/types.ts';
import { StorageHealth } from '../storage/health.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { callbackBody } from './callback-bodies.ts';
import { modelOfRun } from '../models/registry.ts';
import type { PolicyBackends } from './backends.ts';

export type RoleName = 'serve' | 'api' | 'worker';

/** Machine-readable lines on stdout (tests and scripts read them); logs go to stderr. */
export const announce = (obj: Record<string, unknown>) => process.stdout.write(JSON.stringify(obj) + '\n');

export interface RoleBase {
  logger: Logger;
  allowlist: FetchAllowlist;
  /** This role's public base URL: PUBLIC_BASE_URL, else the address it listens on once it does. */
  baseUrl: () => string;
  /** Records the bound address as the base URL unless PUBLIC_BASE_URL set one; returns the base URL. */
  listening(host: string, port: number): string;
  /** The callback envelope of a terminal run (the same bytes on every retry). */
  callbackBody: (run: RunRecord) => { event: string; body: string };
  /** Whether storage takes writes; the role's stores report failed writes to it and it probes them. */
  storage: StorageHealth;
}

export function bootstrapRole(role: RoleName, cfg: Config, opts: { logger?: Logger; bindings?: Record<string, unknown> } = {}): RoleBase {
  fs.mkdirSync(cfg.dataDir, { recursive: true });
  const logger = opts.logger ?? pino({ level: cfg.logLevel, base: { role, ...opts.bindings } }, pino.destination(2));
  let baseUrl = cfg.publicBaseUrl?.replace(/\/+$/, '') ?? '';
  return {
    logger,
    allowlist: parseAllowlist(cfg.fetchAllowlist),
    baseUrl: () => baseUrl,
    listening(host, port) {
      if (!baseUrl) {
        const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
        baseUrl = `http://${h.includes(':') ? `[${h}]` : h}:${port}`;
      }
      return baseUrl;
    },
    callbackBody: (run) => callbackBody(run, baseUrl),
    storage: new StorageHealth(logger.child({ part: 'storage' })),
  };
}

/**
 * The API keys of a role that serves the API. A first start without any generates one into an owner-only file
 * in the data dir; the key itself is shown only on an interactive terminal, never in a log or stdout line
 * (both end up wherever logs are shipped).
 */
export function roleKeys(cfg: Config, quiet: boolean): { ring: KeyRing; generated: string | null } {
  const { ring, generated, keyFile } = loadKeys(cfg.apiKeys, cfg.dataDir);
  if (generated && !quiet) {
    announce({ event: 'api_key_created', key_file: keyFile, key_id: keyId(hashKey(generated)) });
    if (process.stderr.isTTY) process.stderr.write(`\nkleinserve: created an API key (also in ${keyFile}, readable only by you):\n\n    ${generated}\n\n`);
  }
  return { ring, generated };
}

/** Logs one "ready" line, with the addresses a person opens, the first time the engine is ready. */
export function logWhenReady(logger: Logger, engine: EngineStatusView, url: string): void {
  const log = () => logger.info({ url, playground: `${url}/`, docs: `${url}${DOCS_PATH}`, openapi: `${url}/openapi.json` }, 'ready');
  // Polled rather than evented: a cluster's engine view derives its state from the regions' heartbeats.
  const timer = setInterval(() => {
    if (engine.state !== 'ready') return;
    clearInterval(timer);
    log();
  }, 200);
  timer.unref();
}

/** Delivers callbacks from the persisted outbox, woken whenever a run with a callback ends. */
export function callbackDeliverer(cfg: Config, base: RoleBase, store: DeliveryStore, bus: RunEventBus): CallbackDeliverer {
  const deliverer = new CallbackDeliverer({
    store,
    secret: callbackSecret(cfg),
    logger: base.logger.child({ part: 'callbacks' }),
    allowlist: base.allowlist,
    maxAttempts: cfg.callbackMaxAttempts,
    baseDelayMs: cfg.callbackBaseDelayMs,
    timeoutMs: cfg.callbackTimeoutMs,
  });
  bus.subscribe('*', (ev) => {
    // Runs whose surface asks for callbacks before the end (a webhook on start) may write one on any change.
    if (ev.type === 'status' && ev.run.callback_url && (isTerminal(ev.run.status) || ev.run.callback?.on)) deliverer.kick();
  });
  return deliverer;
}

/** Graceful shutdown on SIGTERM / SIGINT: stop, then exit. */
export function onSignals(logger: Logger, stop: () => Promise<void>): void {
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: no new runs, finishing in-flight ones');
    await stop().catch((err) => logger.error({ err }, 'shutdown failed'));
    logger.info('bye');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

export interface ApiParts {
  lifecycle: RunLifecycle;
  engine: EngineStatusView;
  objects: ObjectStore;
  admission: Admission;
  policy: PolicyBackends;
  keys: KeyRing;
  metrics: Metrics;
  /** Where the engine runs on this machine: LoRAs are resolved at submit time. */
  adapters?: AdapterResolver;
}

/** The run service and the HTTP app over it, for the roles that serve the API (`serve`, `api`). */
export async function buildApiServer(cfg: Config, base: RoleBase, parts: ApiParts): Promise<{ app: FastifyInstance; runs: RunService }> {
  const { lifecycle, engine, objects, policy } = parts;
  checkBodyBudget(policy.bodyBudget, cfg.bodyLimitBytes);
  parts.metrics.registry.registerMetric(base.storage.failures);
  const assets = new AssetLibrary(objects);
  const references = new InputReferences({ assets, store: lifecycle.store, objects, baseUrl: base.baseUrl });
  const runs = new RunService({
    lifecycle,
    intake: {
      objects,
      allowlist: base.allowlist,
      limits: (model) => ((model && engine.forModel?.(modelOfRun(model))) || engine).limits,
      maxInputPixels: cfg.maxInputPixels,
      checkCallbacks: true,
      references,
      facts: (model) => ((model && engine.forModel?.(modelOfRun(model))) || engine).status(),
      adapters: parts.adapters,
    },
    assets,
    references,
    admission: parts.admission,
    idempotency: policy.idempotency,
    quotas: policy.quotas,
    retention: policy.retention,
    engine,
    objects,
    logger: base.logger,
    waitCapSeconds: cfg.waitCapSeconds,
    pricePerGpuHour: policy.pricePerGpuHour,
  });
  const app = await buildApp({
    logger: base.logger,
    runs,
    engine,
    objects,
    keys: parts.keys,
    metrics: parts.metrics,
    baseUrl: base.baseUrl,
    bodyLimitBytes: cfg.bodyLimitBytes,
    http: policy.http,
    bodyBudget: policy.bodyBudget,
    storage: base.storage,
    metricsRequireKey: metricsRequireKey(cfg.metricsRequireKey, cfg.host),
    standardWebhooksSecret: standardWebhooksSecret(callbackSecret(cfg)),
    falWebhookJwks: falWebhookJwks(callbackSecret(cfg)),
  });
  return { app, runs };
}
