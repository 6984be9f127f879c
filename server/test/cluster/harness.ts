// Real cluster parts on loopback for the cluster suites: redis-server instances on free ports, a fresh
// Postgres database per file, `kleinserve api` replicas and `kleinserve worker`s (each with its own Python
// engine on the tiny model), plus the checks the scenarios share.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import pg from 'pg';
import sharp from 'sharp';
import { tinyModelDir, tmpDir, waitFor } from '../helpers/server.ts';

const BIN = path.resolve(import.meta.dirname, '../../bin/kleinserve.mjs');
export const PG_ADMIN = process.env.KLEINSERVE_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/postgres';
export const API_KEY = 'clustertestkey';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const exited = (p: ChildProcess) => new Promise<void>((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once('exit', () => r())));

export class RedisServer {
  proc: ChildProcess | null = null;
  constructor(readonly port: number) {}

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<RedisServer> {
    const r = new RedisServer(await freePort());
    await r.up();
    return r;
  }

  /** Starts (or restarts, on the same port) an empty, non-persistent Redis. */
  async up(): Promise<void> {
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: 'ignore',
    });
    await waitFor(() => canConnect(this.port), 10_000, `redis on ${this.port}`);
  }

  async down(): Promise<void> {
    if (!this.proc) return;
    const p = this.proc;
    this.proc = null;
    p.kill('SIGKILL');
    await exited(p);
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export class TestDatabase {
  readonly pool: pg.Pool;
  private constructor(readonly name: string, readonly url: string) {
    this.pool = new pg.Pool({ connectionString: url, max: 3 });
  }

  static async create(prefix: string): Promise<TestDatabase> {
    const name = `${prefix}_${process.pid}_${Date.now().toString(36)}`;
    const admin = new pg.Client({ connectionString: PG_ADMIN });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    await admin.end();
    return new TestDatabase(name, PG_ADMIN.replace(/\/[^/]*$/, `/${name}`));
  }

  query<T extends pg.QueryResultRow = any>(sql: string, params: unknown[] = []) {
    return this.pool.query<T>(sql, params);
  }

  async drop(): Promise<void> {
    await this.pool.end();
    const admin = new pg.Client({ connectionString: PG_ADMIN });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`);
    await admin.end();
  }
}

export interface Proc {
  proc: ChildProcess;
  pid: number;
  dataDir: string;
  stderr: string[];
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

/** Cluster timings short enough for tests: a lost worker's runs move on after ~3 s. */
export const FAST_ENV: Record<string, string> = {
  LOG_LEVEL: 'warn',
  KLEINSERVE_LEASE_MS: '3000',
  KLEINSERVE_STALLED_INTERVAL_MS: '1500',
  KLEINSERVE_HEARTBEAT_MS: '500',
  KLEINSERVE_HEARTBEAT_TTL_MS: '2500',
  KLEINSERVE_SWEEP_MS: '500',
  KLEINSERVE_STALE_MS: '4000',
  KLEINSERVE_WAIT_DEADLINE_MS: '30000',
};

function launch(args: string[], env: Record<string, string>, ready: (msg: any) => boolean, what: string): Promise<Proc & { msg: any }> {
  const dataDir = tmpDir('ks-cluster-');
  const full = { ...process.env, ...FAST_ENV, ...env } as Record<string, string | undefined>;
  delete full.KLEINSERVE_API_KEYS;
  const proc = spawn(process.execPath, [BIN, ...args, '--data', dataDir], { env: full, stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr: string[] = [];
  readline.createInterface({ input: proc.stderr! }).on('line', (l) => {
    stderr.push(l);
    if (stderr.length > 400) stderr.shift();
    if (process.env.KS_TEST_VERBOSE) console.error(`[${what}] ${l}`);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start:\n${stderr.slice(-20).join('\n')}`)), 60_000);
    proc.once('exit', (code) => reject(new Error(`${what} exited ${code}:\n${stderr.slice(-20).join('\n')}`)));
    readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
      let msg: any;
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (!ready(msg)) return;
      clearTimeout(timer);
      const done = exited(proc);
      resolve({
        proc,
        pid: proc.pid!,
        dataDir,
        stderr,
        msg,
        async kill9() {
          proc.kill('SIGKILL');
          await done;
          killEngineOf(dataDir);
        },
        async stop() {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
          const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
          await done;
          clearTimeout(t);
          killEngineOf(dataDir);
        },
      });
    });
  });
}

/** A worker killed with -9 leaves its engine child behind (as a crashed host would not); tests reap it. */
function killEngineOf(dataDir: string): void {
  try {
    const pid = Number(fs.readFileSync(path.join(dataDir, 'engine.pid'), 'utf8'));
    if (pid > 1) process.kill(pid, 'SIGKILL');
  } catch {
    // no engine or already gone
  }
}

export interface ApiProc extends Proc {
  url: string;
}

export async function startApi(opts: {
  db: TestDatabase;
  regions: RedisServer[] | [string, RedisServer][];
  storage: string;
  env?: Record<string, string>;
  args?: string[];
}): Promise<ApiProc> {
  const regionArgs = (opts.regions as (RedisServer | [string, RedisServer])[]).flatMap((r, i) => {
    const [name, redis] = Array.isArray(r) ? r : [`r${i}`, r];
    return ['--region', `${name}=${redis.url}`];
  });
  const p = await launch(
    ['api', '--port', '0', '--database-url', opts.db.url, '--storage', opts.storage, '--api-key', API_KEY, ...regionArgs, ...(opts.args ?? [])],
    opts.env ?? {},
    (m) => m.event === 'listening',
    'api',
  );
  return { ...p, url: p.msg.url };
}

export async function startWorker(opts: {
  db: TestDatabase;
  region: string;
  redis: RedisServer;
  storage: string;
  concurrency?: number;
  env?: Record<string, string>;
  /** `--model` (default: the tiny distilled model, served as flux-2-klein-4b). */
  model?: string;
}): Promise<Proc & { id: string }> {
  const p = await launch(
    [
      'worker', '--region', opts.region, '--redis', opts.redis.url, '--database-url', opts.db.url, '--storage', opts.storage,
      '--model', opts.model ?? tinyModelDir(), '--concurrency', String(opts.concurrency ?? 2),
    ],
    opts.env ?? {},
    (m) => m.event === 'worker_started',
    `worker ${opts.region}`,
  );
  return { ...p, id: p.msg.id };
}

/** Waits until the api sees `n` live workers (engines ready) in `region`. */
export async function waitWorkers(api: ApiProc, region: string, n: number, timeoutMs = 120_000): Promise<void> {
  await waitFor(async () => {
    const h = (await (await fetch(`${api.url}/v1/health`)).json()) as any;
    const r = h.engine.regions?.find((x: any) => x.name === region);
    return !!r && r.healthy && r.workers >= n;
  }, timeoutMs, `${n} live workers in ${region}`);
}

/** Checks an output URL serves a decodable image of the expected size. */
export async function assertImage(url: string, width: number, height: number): Promise<void> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`GET ${url} -> ${res.status}`);
  const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
  if (meta.width !== width || meta.height !== height) throw new Error(`${url}: ${meta.width}x${meta.height}, expected ${width}x${height}`);
}

/** Output files per run in a file: store, for "exactly once" checks against the database. */
export function outputFilesByRun(storageDir: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const root = path.join(storageDir, 'outputs');
  if (!fs.existsSync(root)) return out;
  for (const run of fs.readdirSync(root)) {
    out.set(run, fs.readdirSync(path.join(root, run)).filter((f) => !f.endsWith('.tmp')));
  }
  return out;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until every run is terminal, polling Postgres once per interval (not the api: 100 pollers would load it). */
export async function waitAllTerminal(db: TestDatabase, ids: string[], timeoutMs: number): Promise<void> {
  await waitFor(async () => {
    const { rows } = await db.query(`SELECT COUNT(*)::int AS n FROM runs WHERE id = ANY($1) AND status IN ('succeeded','failed','canceled')`, [ids]);
    return rows[0].n === ids.length;
  }, timeoutMs, `${ids.length} runs terminal`);
}
