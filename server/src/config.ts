// Everything tunable, from flags and environment, checked once at start so a typo fails loudly.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { KEY_PATTERN } from './auth/keys.ts';
import { parseServedModels, type ServedModel } from './models/served.ts';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The checkout's .venv (what scripts/setup.sh makes); an installed package has none and uses python3 from PATH. */
export function defaultPython(): string {
  const venv = path.join(REPO_ROOT, '.venv/bin/python');
  return fs.existsSync(venv) ? venv : 'python3';
}

const intFrom = (def: number) => z.coerce.number().int().nonnegative().default(def);

export const ConfigSchema = z.object({
  // The real model by default; `--model tiny` is an explicit choice, since its output is noise.
  model: z.string().min(1).default('black-forest-labs/FLUX.2-klein-4B'),
  /** Every model this process serves (`--model [PUBLIC=]CHECKPOINT`, repeatable); absent: `model` as flux-2-klein-4b. */
  models: z.array(z.object({ id: z.string().min(1), checkpoint: z.string().min(1) })).min(1).optional(),
  host: z.string().default('127.0.0.1'),
  port: z.coerce.number().int().min(0).max(65535).default(8080),
  dataDir: z.string().min(1),
  apiKeys: z.array(z.string().regex(KEY_PATTERN, 'API keys must match ^[A-Za-z0-9_]+$')).default([]),
  /** Whether GET /metrics needs an API key; auto: yes unless bound to loopback. */
  metricsRequireKey: z.enum(['auto', 'yes', 'no']).default('auto'),
  publicBaseUrl: z.url().optional(),
  callbackSecret: z.string().min(1).optional(),
  fetchAllowlist: z.string().optional(),
  python: z.string().min(1).default(defaultPython),
  /** Concurrent runs handed to the engine, so its batcher sees concurrent requests. */
  concurrency: intFrom(4),
  maxAttempts: intFrom(3),
  engineIdleDeadlineMs: intFrom(120_000),
  engineStartupTimeoutMs: intFrom(600_000),
  waitCapSeconds: intFrom(60),
  fetchTimeoutMs: intFrom(15_000),
  fetchMaxBytes: intFrom(25 * 1024 * 1024),
  fetchMaxRedirects: intFrom(5),
  maxInputPixels: intFrom(64 * 1024 * 1024),
  bodyLimitBytes: intFrom(80 * 1024 * 1024),
  callbackMaxAttempts: intFrom(8),
  callbackBaseDelayMs: intFrom(1000),
  callbackTimeoutMs: intFrom(10_000),
  shutdownGraceMs: intFrom(30_000),
  /** Bare LoRA names resolve to files in this directory; unset: bare names are refused. */
  loraDir: z.string().min(1).optional(),
  /** Disk bound of downloaded LoRAs (by content hash, least recently used first out) and the largest one accepted. */
  loraCacheMb: intFrom(4096),
  loraMaxMb: intFrom(1024),
  /** The engine's LoRA bounds: the largest rank it accepts, and its host / GPU caches of converted adapters. */
  loraMaxRank: z.coerce.number().int().positive().default(128),
  loraHostCacheMb: intFrom(2048),
  loraGpuCacheMb: intFrom(1024),
  /** Where Hugging Face repo ids are fetched from (a mirror, or a test's loopback server). */
  hfEndpoint: z.url().default('https://huggingface.co'),
  /** Image classifier the engine runs on every output (a directory or Hugging Face repo id); unset: none. */
  safetyChecker: z.string().min(1).optional(),
  safetyPolicy: z.enum(['flag', 'blur', 'fail']).default('flag'),
  safetyThreshold: z.coerce.number().min(0).max(1.01).default(0.5),
  allowSafetyOptOut: z.boolean().default(false),
  /** Every run byte-identical for its input and seed: the engine batches nothing (`--deterministic`). */
  deterministic: z.boolean().default(false),
  /** fsync every stored object (power-loss durability) at a latency cost. */
  fsync: z.boolean().default(false),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export type Config = z.infer<typeof ConfigSchema>;

/** Flags override environment; `values` come from the CLI's parseArgs. */
export function loadConfig(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): Config {
  const list = (s: string | undefined) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : []);
  const flagKeys = (values['api-key'] as string[] | undefined) ?? [];
  const modelSpecs = [values.model ?? list(env.KLEINSERVE_MODEL)].flat().filter((v): v is string => typeof v === 'string' && v !== '');
  let models: ServedModel[] | undefined;
  try {
    models = modelSpecs.length ? parseServedModels(modelSpecs) : undefined;
  } catch (err) {
    throw new Error(`invalid configuration:\n  model: ${(err as Error).message}`);
  }
  const raw = {
    model: models?.[0].checkpoint,
    models,
    host: values.host ?? env.KLEINSERVE_HOST,
    port: values.port ?? env.PORT,
    dataDir: path.resolve((values.data as string | undefined) ?? env.KLEINSERVE_DATA ?? '.data'),
    apiKeys: flagKeys.length ? flagKeys : list(env.KLEINSERVE_API_KEYS),
    metricsRequireKey: values['metrics-require-key'] ?? (env.KLEINSERVE_METRICS_REQUIRE_KEY || undefined),
    publicBaseUrl: env.PUBLIC_BASE_URL || undefined,
    callbackSecret: env.KLEINSERVE_CALLBACK_SECRET || undefined,
    fetchAllowlist: env.KLEINSERVE_FETCH_ALLOWLIST,
    python: values.python ?? (env.KLEINSERVE_PYTHON || undefined),
    concurrency: values.concurrency ?? env.KLEINSERVE_CONCURRENCY,
    maxAttempts: env.KLEINSERVE_MAX_ATTEMPTS,
    engineIdleDeadlineMs: env.KLEINSERVE_ENGINE_DEADLINE_MS,
    engineStartupTimeoutMs: env.KLEINSERVE_ENGINE_STARTUP_TIMEOUT_MS,
    waitCapSeconds: env.KLEINSERVE_WAIT_CAP_S,
    fetchTimeoutMs: env.KLEINSERVE_FETCH_TIMEOUT_MS,
    fetchMaxBytes: env.KLEINSERVE_FETCH_MAX_BYTES,
    fetchMaxRedirects: env.KLEINSERVE_FETCH_MAX_REDIRECTS,
    callbackMaxAttempts: env.KLEINSERVE_CALLBACK_MAX_ATTEMPTS,
    callbackBaseDelayMs: env.KLEINSERVE_CALLBACK_BASE_DELAY_MS,
    callbackTimeoutMs: env.KLEINSERVE_CALLBACK_TIMEOUT_MS,
    shutdownGraceMs: env.KLEINSERVE_SHUTDOWN_GRACE_MS,
    fsync: env.KLEINSERVE_FSYNC ? env.KLEINSERVE_FSYNC === '1' : undefined,
    loraDir: values['lora-dir'] ?? (env.KLEINSERVE_LORA_DIR || undefined),
    loraCacheMb: values['lora-cache-mb'] ?? env.KLEINSERVE_LORA_CACHE_MB,
    loraMaxMb: values['lora-max-mb'] ?? env.KLEINSERVE_LORA_MAX_MB,
    loraMaxRank: values['lora-max-rank'] ?? env.KLEINSERVE_LORA_MAX_RANK,
    loraHostCacheMb: values['lora-host-cache-mb'] ?? env.KLEINSERVE_LORA_HOST_CACHE_MB,
    loraGpuCacheMb: values['lora-gpu-cache-mb'] ?? env.KLEINSERVE_LORA_GPU_CACHE_MB,
    hfEndpoint: env.KLEINSERVE_HF_ENDPOINT || env.HF_ENDPOINT || undefined,
    safetyChecker: values['safety-checker'] ?? (env.KLEINSERVE_SAFETY_CHECKER || undefined),
    safetyPolicy: values['safety-policy'] ?? (env.KLEINSERVE_SAFETY_POLICY || undefined),
    safetyThreshold: values['safety-threshold'] ?? (env.KLEINSERVE_SAFETY_THRESHOLD || undefined),
    allowSafetyOptOut: values['allow-safety-opt-out'] ?? (env.KLEINSERVE_ALLOW_SAFETY_OPT_OUT ? env.KLEINSERVE_ALLOW_SAFETY_OPT_OUT === '1' : undefined),
    deterministic: values.deterministic ?? (env.KLEINSERVE_DETERMINISTIC ? env.KLEINSERVE_DETERMINISTIC === '1' : undefined),
    logLevel: env.LOG_LEVEL,
  };
  const parsed = ConfigSchema.safeParse(Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined)));
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    throw new Error(`invalid configuration:\n${lines.join('\n')}`);
  }
  return parsed.data;
}

/** The operator's callback secret, or one generated once and kept in the data dir. */
export function callbackSecret(cfg: Config): string {
  if (cfg.callbackSecret) return cfg.callbackSecret;
  const file = path.join(cfg.dataDir, 'callback-secret');
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const secret = crypto.randomBytes(32).toString('hex');
  fs.writeFileSync(file, secret + '\n', { mode: 0o600 });
  return secret;
}
