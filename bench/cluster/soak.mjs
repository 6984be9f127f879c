#!/usr/bin/env node
// Cluster soak (issue 5 scenario e): N runs through two api replicas and three workers while workers are
// killed with -9 at random (and restarted) and one api replica is killed once. Counts lost and doubled
// runs from Postgres (runs, run_executions) and from the output store (files per run), not from clients.
//
//   node bench/cluster/soak.mjs [--runs 300] [--kill-every-ms 4000] [--submit-every-ms 150] [--out bench/results/cluster-soak]
//
// Needs: redis-server on PATH, Postgres on 127.0.0.1:5432 (trust, user postgres), .venv with the engine.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import pg from 'pg';
import sharp from 'sharp';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(ROOT, 'server/bin/kleinserve.mjs');
const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '300' },
    out: { type: 'string', default: path.join(ROOT, 'bench/results/cluster-soak') },
    'kill-every-ms': { type: 'string', default: '4000' },
    /** Pause between submissions, so the chaos lands while runs are in flight rather than after. */
    'submit-every-ms': { type: 'string', default: '150' },
  },
});
const N = Number(values.runs);
const KEY = 'soakkey';
const ENV = {
  ...process.env,
  LOG_LEVEL: 'warn',
  KLEINSERVE_LEASE_MS: '4000',
  KLEINSERVE_STALLED_INTERVAL_MS: '2000',
  KLEINSERVE_HEARTBEAT_MS: '500',
  KLEINSERVE_HEARTBEAT_TTL_MS: '3000',
  KLEINSERVE_SWEEP_MS: '500',
  KLEINSERVE_STALE_MS: '5000',
  KLEINSERVE_WAIT_DEADLINE_MS: '600000',
  KLEINSERVE_MAX_CONCURRENT_RUNS: '0',
  KLEINSERVE_RUNS_PER_MINUTE: '0',
  // A worker that dies repeatedly while holding one run would fail it as WORKER_LOST after this many attempts.
  KLEINSERVE_MAX_ATTEMPTS: '6',
};
const log = (...a) => console.error(new Date().toISOString().slice(11, 19), ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tmp = (p) => fs.mkdtempSync(path.join(os.tmpdir(), p));

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function launch(args, readyEvent) {
  const dataDir = tmp('ks-soak-');
  const proc = spawn(process.execPath, [BIN, ...args, '--data', dataDir], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  const errs = [];
  readline.createInterface({ input: proc.stderr }).on('line', (l) => errs.push(l) > 50 && errs.shift());
  return new Promise((resolve, reject) => {
    proc.once('exit', (c) => reject(new Error(`${args[0]} exited ${c}\n${errs.join('\n')}`)));
    readline.createInterface({ input: proc.stdout }).on('line', (line) => {
      try {
        const m = JSON.parse(line);
        if (m.event === readyEvent) resolve({ proc, dataDir, msg: m });
      } catch {}
    });
  });
}

function kill9(p) {
  p.proc.kill('SIGKILL');
  try {
    process.kill(Number(fs.readFileSync(path.join(p.dataDir, 'engine.pid'), 'utf8')), 'SIGKILL');
  } catch {}
}

async function main() {
  const dbName = `ks_soak_${Date.now().toString(36)}`;
  const admin = new pg.Client({ connectionString: 'postgres://postgres@127.0.0.1:5432/postgres' });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const dbUrl = `postgres://postgres@127.0.0.1:5432/${dbName}`;
  const redisPort = await freePort();
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await sleep(500);
  const storageDir = tmp('ks-soak-objects-');
  const common = ['--database-url', dbUrl, '--storage', `file:${storageDir}`];
  const model = tmp('ks-soak-tiny-');
  await new Promise((r) => spawn(path.join(ROOT, '.venv/bin/python'), ['-m', 'kleinserve_engine', 'make-tiny-model', model], { stdio: 'ignore' }).on('exit', r));

  const startApi = () => launch(['api', '--port', '0', '--region', `main=redis://127.0.0.1:${redisPort}`, '--api-key', KEY, ...common], 'listening');
  const startWorker = () =>
    launch(['worker', '--region', 'main', '--redis', `redis://127.0.0.1:${redisPort}`, '--model', model, '--concurrency', '2', ...common], 'worker_started');
  const apis = [await startApi(), await startApi()];
  let workers = await Promise.all([startWorker(), startWorker(), startWorker()]);
  const urls = apis.map((a) => a.msg.url);
  let alive = [true, true];
  for (;;) {
    const h = await (await fetch(`${urls[0]}/v1/health`)).json();
    if (h.engine.regions[0].workers >= 3) break;
    await sleep(500);
  }
  log(`cluster up: 2 apis, 3 workers; soaking ${N} runs`);

  const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: 90, g: 140, b: 200 } } }).png().toBuffer();
  const image = `data:image/png;base64,${png.toString('base64')}`;
  const refs = Array.from({ length: N }, (_, i) => `soak-${i}`);
  const kills = { workers: 0, apis: 0, freezes: 0 };
  const clientErrors = [];

  // Chaos: every few seconds, kill -9 a random worker and start a fresh one, or (every third event) freeze
  // one with SIGSTOP past its lease and thaw it, so its engine result arrives late and must lose. Kill one
  // api once, mid-way through submission.
  let chaos = true;
  const chaosLoop = (async () => {
    for (let n = 1; chaos; n++) {
      await sleep(Number(values['kill-every-ms']) * (0.5 + Math.random()));
      if (!chaos) break;
      const i = Math.floor(Math.random() * workers.length);
      if (n % 3 === 0) {
        workers[i].proc.kill('SIGSTOP');
        kills.freezes++;
        log(`freeze worker ${workers[i].msg.id} past its lease`);
        await sleep(Number(ENV.KLEINSERVE_LEASE_MS) + 3000);
        workers[i].proc.kill('SIGCONT');
        continue;
      }
      kill9(workers[i]);
      kills.workers++;
      log(`kill -9 worker ${workers[i].msg.id}`);
      workers[i] = await startWorker();
    }
  })();

  async function submit(i) {
    const body = JSON.stringify({ client_ref: refs[i], input: { prompt: `soak ${i}`, image_urls: [image], steps: 1, seed: i } });
    for (let attempt = 0; attempt < 20; attempt++) {
      const which = (i + attempt) % 2;
      if (!alive[which]) continue;
      try {
        const res = await fetch(`${urls[which]}/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs`, {
          method: 'POST',
          headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'idempotency-key': refs[i] },
          body,
        });
        if (res.status === 200) return (await res.json()).id;
        clientErrors.push(`${refs[i]}: HTTP ${res.status}`);
      } catch (err) {
        clientErrors.push(`${refs[i]}: ${err.message}`);
      }
      await sleep(500);
    }
    return null;
  }

  const ids = [];
  const started = Date.now();
  for (let i = 0; i < N; i++) {
    if (i === Math.floor(N / 2)) {
      kill9(apis[0]);
      alive[0] = false;
      kills.apis++;
      log('kill -9 api replica 0');
    }
    ids.push(submit(i));
    await sleep(Number(values['submit-every-ms']));
  }
  const created = await Promise.all(ids);
  log(`submitted ${created.filter(Boolean).length}/${N} in ${Math.round((Date.now() - started) / 1000)} s`);

  const pool = new pg.Pool({ connectionString: dbUrl, max: 2 });
  const deadline = Date.now() + 30 * 60_000;
  for (;;) {
    const { rows } = await pool.query(`SELECT COUNT(*)::int AS n FROM runs WHERE status IN ('queued','dispatching','running')`);
    if (rows[0].n === 0 || Date.now() > deadline) break;
    await sleep(2000);
  }
  chaos = false;
  await chaosLoop;
  const elapsedS = Math.round((Date.now() - started) / 1000);

  // Counts from the database and the output store.
  const runs = (await pool.query('SELECT id, client_ref, status, failure_code, attempts, moves, output FROM runs')).rows;
  const execs = (await pool.query('SELECT run_id, COUNT(*) FILTER (WHERE won)::int AS won, COUNT(*)::int AS n FROM run_executions GROUP BY run_id')).rows;
  const files = new Map();
  const outRoot = path.join(storageDir, 'outputs');
  for (const d of fs.existsSync(outRoot) ? fs.readdirSync(outRoot) : []) files.set(d, fs.readdirSync(path.join(outRoot, d)).filter((f) => !f.endsWith('.tmp')));
  const byRef = new Map();
  for (const r of runs) byRef.set(r.client_ref, (byRef.get(r.client_ref) ?? 0) + 1);
  const wonBy = new Map(execs.map((e) => [e.run_id, e]));
  const succeeded = runs.filter((r) => r.status === 'succeeded');
  const result = {
    runs_requested: N,
    runs_in_database: runs.length,
    lost: refs.filter((r) => !byRef.has(r)).length + runs.filter((r) => r.status !== 'succeeded').length,
    not_succeeded: runs.filter((r) => r.status !== 'succeeded').map((r) => ({ id: r.id, status: r.status, failure_code: r.failure_code })),
    duplicate_runs_per_client_ref: [...byRef.values()].filter((n) => n > 1).length,
    completed_twice: execs.filter((e) => e.won > 1).length,
    // Engine results that reached the completion write more than once (a frozen worker thawing late).
    re_executed_after_kill: execs.filter((e) => e.n > 1).length,
    late_results_rejected: execs.reduce((n, e) => n + (e.n - e.won), 0),
    succeeded_without_output_file: succeeded.filter((r) => !(files.get(r.id)?.length === r.output.images.length && r.output.images.every((img) => fs.existsSync(path.join(storageDir, img.key))))).length,
    runs_with_more_than_one_output_file: [...files.values()].filter((f) => f.length > 1).length,
    succeeded_runs_without_execution_record: succeeded.filter((r) => !wonBy.get(r.id)?.won).length,
    runs_taken_over: runs.filter((r) => r.attempts > 0).length,
    worker_kills: kills.workers,
    worker_freezes_past_lease: kills.freezes,
    api_kills: kills.apis,
    client_errors_retried: clientErrors.length,
    elapsed_s: elapsedS,
    command: `node bench/cluster/soak.mjs --runs ${N} --kill-every-ms ${values['kill-every-ms']} --submit-every-ms ${values['submit-every-ms']}`,
    machine: `${os.cpus().length} cores, load average at end ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`,
    at: new Date().toISOString(),
  };
  fs.mkdirSync(path.dirname(values.out), { recursive: true });
  fs.writeFileSync(`${values.out}.json`, JSON.stringify(result, null, 2) + '\n');
  fs.writeFileSync(
    `${values.out}.md`,
    `# Cluster soak (issue 5, scenario e)\n\n\`${result.command}\` — ${result.at}, ${result.machine}\n\n` +
      `2 api replicas, 3 workers (concurrency 2, tiny model, 64 px, 1 step), one region; a random worker killed with -9 ` +
      `(and replaced), or every third time frozen with SIGSTOP past its lease and thawed, every ~${values['kill-every-ms']} ms; api replica 0 killed with -9 half-way through submission.\n\n` +
      '| count | value |\n|---|---|\n' +
      Object.entries(result).filter(([k]) => !['command', 'machine', 'at', 'not_succeeded'].includes(k)).map(([k, v]) => `| ${k} | ${v} |`).join('\n') +
      '\n\nCounted from Postgres (`runs`, `run_executions`) and the output directory, not from client answers.\n',
  );
  console.log(JSON.stringify(result, null, 2));

  for (const p of [...apis, ...workers]) kill9(p);
  redis.kill('SIGKILL');
  await pool.end();
  await sleep(500);
  await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
  await admin.end();
  fs.rmSync(storageDir, { recursive: true, force: true });
  process.exit(result.lost || result.completed_twice || result.duplicate_runs_per_client_ref ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
