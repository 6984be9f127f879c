// Starts the REAL `kleinserve serve` (node bin) with the REAL Python engine on the tiny model, for e2e tests.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { inject } from 'vitest';

const BIN = path.resolve(import.meta.dirname, '../../bin/kleinserve.mjs');

export interface ServerHandle {
  url: string;
  port: number;
  dataDir: string;
  proc: ChildProcess;
  /** The key this start generated (read from the file its api_key_created line names). */
  generatedKey: string | null;
  stdout: string[];
  stderr: string[];
  stop(): Promise<void>;
  /** stop(), then remove the data directory (tests must not leave data behind in /tmp). */
  dispose(): Promise<void>;
  kill9(): Promise<void>;
  health(): Promise<any>;
}

export interface StartOptions {
  dataDir?: string;
  apiKeys?: string[];
  env?: Record<string, string>;
  args?: string[];
  /** The checkpoint to serve instead of the tiny distilled model. */
  model?: string;
  /** Wait until /v1/health reports the engine ready (default true). */
  waitReady?: boolean;
}

export function tinyModelDir(): string {
  const err = inject('tinyModelError');
  if (err) throw new Error(`tiny model unavailable: ${err}`);
  return inject('tinyModelDir');
}

export const tmpDir = (prefix: string) => fs.mkdtempSync(path.join(os.tmpdir(), prefix));

export async function startServer(opts: StartOptions = {}): Promise<ServerHandle> {
  const dataDir = opts.dataDir ?? tmpDir('ks-e2e-');
  const args = [BIN, 'serve', '--model', opts.model ?? tinyModelDir(), '--port', '0', '--data', dataDir, ...(opts.args ?? [])];
  for (const k of opts.apiKeys ?? []) args.push('--api-key', k);
  const env: Record<string, string | undefined> = { ...process.env, LOG_LEVEL: 'warn', ...opts.env };
  if (!opts.apiKeys) delete env.KLEINSERVE_API_KEYS;
  const proc = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  readline.createInterface({ input: proc.stderr! }).on('line', (l) => {
    stderr.push(l);
    if (process.env.KS_TEST_VERBOSE) console.error(l);
  });
  let generatedKey: string | null = null;
  const listening = await new Promise<{ url: string; port: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not listen:\n${stderr.slice(-20).join('\n')}`)), 60_000);
    proc.once('exit', (code) => reject(new Error(`server exited ${code}:\n${stderr.slice(-20).join('\n')}`)));
    readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
      stdout.push(line);
      const msg = JSON.parse(line);
      // The key itself is never printed on a pipe: it is in the owner-only file the line names.
      if (msg.event === 'api_key_created') generatedKey = fs.readFileSync(msg.key_file, 'utf8').trim();
      if (msg.event === 'listening') {
        clearTimeout(timer);
        resolve(msg);
      }
    });
  });
  const exited = new Promise<void>((r) => (proc.exitCode !== null ? r() : proc.once('exit', () => r())));
  const handle: ServerHandle = {
    ...listening,
    dataDir,
    proc,
    generatedKey,
    stdout,
    stderr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
    async dispose() {
      await handle.stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
    async kill9() {
      proc.kill('SIGKILL');
      await exited;
    },
    async health() {
      return (await fetch(`${listening.url}/v1/health`)).json();
    },
  };
  if (opts.waitReady !== false) await waitFor(async () => (await handle.health()).ok === true, 120_000, 'engine ready');
  return handle;
}

export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export class Api {
  constructor(
    readonly url: string,
    readonly key: string,
  ) {}

  headers(extra: Record<string, string> = {}) {
    return { authorization: `Bearer ${this.key}`, 'content-type': 'application/json', ...extra };
  }

  async create(body: unknown, extra: Record<string, string> = {}) {
    const res = await fetch(`${this.url}/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs`, {
      method: 'POST',
      headers: this.headers(extra),
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as any, headers: res.headers };
  }

  async get(id: string): Promise<any> {
    return (await fetch(`${this.url}/v1/runs/${id}`, { headers: this.headers() })).json();
  }

  async cancel(id: string) {
    const res = await fetch(`${this.url}/v1/admin/runs/${id}/cancellation`, { method: 'POST', headers: { authorization: `Bearer ${this.key}` } });
    return { status: res.status, body: (await res.json()) as any };
  }

  async waitTerminal(id: string, timeoutMs = 60_000): Promise<any> {
    let run: any;
    await waitFor(async () => {
      run = await this.get(id);
      return ['succeeded', 'failed', 'canceled'].includes(run.status_code);
    }, timeoutMs, `run ${id} terminal`);
    return run;
  }
}
