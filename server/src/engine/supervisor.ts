// Starts the Python engine as a child, waits for its `listening` line, keeps one client connected, and
// restarts it with backoff when it dies or hangs. Exit status 2 means the model cannot load: never restart.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import type { Logger } from 'pino';
import {
  EngineClient,
  EngineDeadlineError,
  type EngineHealth,
  type GenerateParams,
  type GenerateResult,
  type RequestOptions,
} from './client.ts';
import { ModelUnavailableError, type Engine, type EngineState, type EngineStatus } from './engine.ts';
import { DEFAULT_ENGINE_LIMITS, type EngineLimits } from './limits.ts';
import { ModelEngines } from './model-engines.ts';
import { findModel } from '../models/registry.ts';
import { servedModels, type ServedModel } from '../models/served.ts';

export interface SupervisorOptions {
  python: string;
  model: string;
  socketPath: string;
  pidFile: string;
  logger: Logger;
  /** A request that sees no frame for this long means the engine hung: kill -9 and restart. */
  idleDeadlineMs: number;
  startupTimeoutMs: number;
  extraArgs?: string[];
}

type LocalEngineConfig = {
  python: string;
  model: string;
  dataDir: string;
  engineIdleDeadlineMs: number;
  engineStartupTimeoutMs: number;
  safetyChecker?: string;
  safetyPolicy?: string;
  safetyThreshold?: number;
  allowSafetyOptOut?: boolean;
  deterministic?: boolean;
} & EngineLoraLimits;

/** The engine's LoRA bounds as the operator sets them (`--lora-*`); unset ones keep the engine's defaults. */
export interface EngineLoraLimits {
  loraMaxRank?: number;
  loraMaxMb?: number;
  /** Host memory of converted adapters (the engine's `--lora-cache-mb`; the server's own is its disk cache). */
  loraHostCacheMb?: number;
  loraGpuCacheMb?: number;
}

/**
 * The engine a `serve` process or a worker runs next to itself. Fixed names in the data dir: a process restarted
 * after kill -9 finds and reaps the engine its previous life left behind (holding GPU memory). One data dir each.
 * `served`: the checkpoint (default `cfg.model`) and the directory of its socket and pid file (default the data
 * dir itself); compile caches and tiny models stay in the data dir, shared by every engine of the process.
 */
export function localEngine(cfg: LocalEngineConfig, logger: Logger, served: { checkpoint?: string; dir?: string } = {}): EngineSupervisor {
  const dir = served.dir ?? cfg.dataDir;
  fs.mkdirSync(dir, { recursive: true });
  return new EngineSupervisor({
    python: cfg.python,
    model: served.checkpoint ?? cfg.model,
    socketPath: path.join(dir, 'engine.sock'),
    pidFile: path.join(dir, 'engine.pid'),
    logger,
    idleDeadlineMs: cfg.engineIdleDeadlineMs,
    startupTimeoutMs: cfg.engineStartupTimeoutMs,
    extraArgs: engineArgs(cfg),
  });
}

/**
 * One supervised engine per served model. A single model keeps the data dir's own `engine.sock` (as before);
 * several get `engines/<short id>/` each, so every engine has its own socket, pid file and restart policy.
 */
export function localEngines(cfg: LocalEngineConfig & { models?: ServedModel[] }, logger: Logger): ModelEngines {
  const models = servedModels(cfg);
  const engines = new Map<string, EngineSupervisor>();
  for (const m of models) {
    const dir = models.length === 1 ? cfg.dataDir : path.join(cfg.dataDir, 'engines', findModel(m.id)?.short ?? m.id.replace(/\W+/g, '-'));
    engines.set(m.id, localEngine(cfg, models.length === 1 ? logger : logger.child({ model: m.id }), { checkpoint: m.checkpoint, dir }));
  }
  return new ModelEngines(engines);
}

/** The engine's flags beyond its model and socket, from the operator's settings. */
export function engineArgs(cfg: LocalEngineConfig): string[] {
  return ['--data-dir', cfg.dataDir, ...safetyArgs(cfg), ...loraArgs(cfg), ...(cfg.deterministic ? ['--deterministic'] : [])];
}

/** LoRA bounds, as the engine's flags: it refuses adapters over them and sizes its adapter caches by them. */
export function loraArgs(cfg: EngineLoraLimits): string[] {
  const flags: [string, number | undefined][] = [
    ['--lora-max-rank', cfg.loraMaxRank],
    ['--lora-max-mb', cfg.loraMaxMb],
    ['--lora-cache-mb', cfg.loraHostCacheMb],
    ['--lora-gpu-cache-mb', cfg.loraGpuCacheMb],
  ];
  return flags.flatMap(([flag, value]) => (value === undefined ? [] : [flag, String(value)]));
}

/** The operator's safety-checker settings, as the engine's flags (the engine loads and runs the checker). */
function safetyArgs(cfg: { safetyChecker?: string; safetyPolicy?: string; safetyThreshold?: number; allowSafetyOptOut?: boolean }): string[] {
  if (!cfg.safetyChecker) return [];
  return [
    '--safety-checker',
    cfg.safetyChecker,
    ...(cfg.safetyPolicy ? ['--safety-policy', cfg.safetyPolicy] : []),
    ...(cfg.safetyThreshold !== undefined ? ['--safety-threshold', String(cfg.safetyThreshold)] : []),
    ...(cfg.allowSafetyOptOut ? ['--allow-safety-opt-out'] : []),
  ];
}


export class EngineSupervisor extends EventEmitter implements Engine {
  state: EngineState = 'stopped';
  limits: EngineLimits = DEFAULT_ENGINE_LIMITS;
  private child: ChildProcess | null = null;
  private client: EngineClient | null = null;
  private lastHealth: EngineHealth | null = null;
  private restarts = 0;
  private backoffMs = 250;
  private error: string | null = null;
  private stopping = false;
  private healthTimer?: NodeJS.Timeout;
  private readyAt = 0;

  constructor(private readonly opts: SupervisorOptions) {
    super();
    this.setMaxListeners(0);
  }

  start(): void {
    this.stopping = false;
    this.killStaleChild();
    this.spawnChild();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.healthTimer);
    this.setState('stopped');
    this.client?.close();
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
    fs.rmSync(this.opts.pidFile, { force: true });
  }

  status(): EngineStatus {
    const h = this.lastHealth;
    return {
      status: this.state,
      ok: this.state === 'ready',
      pid: this.child?.pid ?? null,
      restarts: this.restarts,
      model: this.opts.model,
      device: h?.device,
      dtype: h?.dtype,
      queue_depth: h?.queue_depth,
      in_flight: h?.in_flight,
      limits: this.limits,
      error: this.error,
      model_info: h?.model_info ?? null,
      ...(h?.safety ? { safety: h.safety } : {}),
    };
  }

  async waitReady(signal?: AbortSignal): Promise<void> {
    while (this.state !== 'ready') {
      if (this.state === 'unavailable') throw new ModelUnavailableError(this.error ?? 'model unavailable');
      if (this.state === 'stopped') throw new Error('engine stopped');
      signal?.throwIfAborted();
      await new Promise<void>((resolve) => {
        const done = () => {
          this.off('state', done);
          signal?.removeEventListener('abort', done);
          resolve();
        };
        this.on('state', done);
        signal?.addEventListener('abort', done, { once: true });
      });
    }
  }

  async generate(params: GenerateParams, opts: RequestOptions = {}): Promise<GenerateResult> {
    await this.waitReady(opts.signal);
    const client = this.client!;
    try {
      return await client.generate(params, { ...opts, idleDeadlineMs: this.opts.idleDeadlineMs });
    } catch (err) {
      if (err instanceof EngineDeadlineError) {
        this.opts.logger.error({ err: err.message }, 'engine hung past its deadline; killing it');
        this.child?.kill('SIGKILL');
      }
      throw err;
    }
  }

  async metricsText(): Promise<string> {
    if (this.state !== 'ready' || !this.client) return '';
    return this.client.metrics(2000).catch(() => '');
  }

  private setState(s: EngineState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  /** A previous server killed with -9 leaves its engine child running on our socket; end that child. */
  private killStaleChild(): void {
    let pid: number;
    try {
      pid = Number(fs.readFileSync(this.opts.pidFile, 'utf8'));
    } catch {
      return;
    }
    try {
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmdline.includes('kleinserve_engine') && cmdline.includes(this.opts.socketPath)) process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }

  private spawnChild(): void {
    const { python, model, socketPath, logger } = this.opts;
    fs.rmSync(socketPath, { force: true });
    this.setState('starting');
    // --exit-with-stdin: the engine watches the stdin pipe we hold, so it dies with us even on kill -9.
    const args = ['-m', 'kleinserve_engine', 'serve', '--model', model, '--listen', `unix:${socketPath}`, '--exit-with-stdin', ...(this.opts.extraArgs ?? [])];
    logger.info({ python, args }, 'starting engine');
    const child = spawn(python, args, {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, PYTHONUNBUFFERED: '1' },
    });
    this.child = child;
    if (child.pid) fs.writeFileSync(this.opts.pidFile, String(child.pid));
    let failedLine: string | null = null;
    const startup = setTimeout(() => {
      if (this.state === 'starting') {
        logger.error('engine did not report listening in time; killing it');
        child.kill('SIGKILL');
      }
    }, this.opts.startupTimeoutMs);
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      let msg: { event?: string; address?: string; message?: string };
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (msg.event === 'listening' && msg.address) {
        clearTimeout(startup);
        this.connect(child, msg.address).catch((err) => {
          // An engine that fails to load closes its socket and exits 2 on its own: give it time to say so,
          // so that exit status (no restart) is what we see rather than our own SIGKILL.
          setTimeout(() => {
            if (this.child !== child || child.exitCode !== null || child.signalCode !== null) return;
            logger.error({ err: err.message }, 'lost the engine connection; killing it');
            child.kill('SIGKILL');
          }, 3000).unref();
        });
      } else if (msg.event === 'failed') {
        failedLine = msg.message ?? 'model unavailable';
      }
    });
    child.on('error', (err) => {
      this.error = `cannot start engine: ${err.message}`;
    });
    child.on('exit', (code, signal) => {
      clearTimeout(startup);
      clearInterval(this.healthTimer);
      this.client?.close();
      this.client = null;
      if (this.child === child) this.child = null;
      if (this.stopping) return;
      if (code === 2) {
        this.error = failedLine ?? 'model unavailable (engine exit status 2)';
        logger.error({ error: this.error }, 'engine cannot load the model; not restarting');
        this.setState('unavailable');
        return;
      }
      this.restarts++;
      this.error = `engine exited (code ${code}, signal ${signal})`;
      if (Date.now() - this.readyAt > 30_000 && this.readyAt) this.backoffMs = 250;
      const delay = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, 10_000);
      logger.warn({ code, signal, delay }, 'engine exited; restarting');
      this.setState('restarting');
      setTimeout(() => !this.stopping && this.spawnChild(), delay).unref();
    });
  }

  private async connect(child: ChildProcess, address: string): Promise<void> {
    const client = await EngineClient.connect(address);
    if (this.child !== child) return client.close();
    this.client = client;
    this.setState('loading');
    for (;;) {
      if (this.child !== child || this.stopping) return;
      const h = await client.health(10_000);
      this.lastHealth = h;
      if (h.limits) this.limits = h.limits;
      if (h.status === 'ready') break;
      if (h.status === 'failed') {
        // The engine exits with status 2 right after; the exit handler records it.
        this.error = typeof h.error === 'string' ? h.error : JSON.stringify(h.error);
        return;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    this.error = null;
    this.readyAt = Date.now();
    this.setState('ready');
    this.opts.logger.info({ pid: child.pid, device: this.lastHealth?.device }, 'engine ready');
    this.healthTimer = setInterval(() => this.checkHealth(child), 5000);
    this.healthTimer.unref();
  }

  private checkHealth(child: ChildProcess): void {
    const client = this.client;
    if (!client || this.child !== child) return;
    client.health(15_000).then(
      (h) => {
        this.lastHealth = h;
      },
      (err) => {
        if (err instanceof EngineDeadlineError) {
          this.opts.logger.error('engine health check hung; killing it');
          child.kill('SIGKILL');
        }
      },
    );
  }
}
