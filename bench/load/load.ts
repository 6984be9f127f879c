// Load benchmark (issue 7 item 6), run by hand, not in CI: the REAL server + tiny engine on this machine.
//  1. create+poll: N clients (default 200), each with its own API key, loop for D seconds: create a run
//     (64x64 inline JPEG, 1 step), poll GET /v1/runs/{id} every P ms until terminal, repeat. A prober hits
//     /v1/health every 500 ms throughout (it must stay fast under overload).
//  2. reads: autocannon, 500 connections of GET /v1/runs/{id} on finished runs for R seconds.
// The server's RSS (and the engine's) is sampled every second, through both scenarios and for Q seconds
// after load stops. Results: bench/results/load-<stamp>.{json,md}.
// Usage: node --import tsx bench/load/load.ts [--clients 200] [--duration 120] [--poll-ms 500]
//        [--readers 500] [--read-duration 30] [--quiet 60] [--model DIR]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import sharp from 'sharp';
import { Agent, request } from 'undici';

const ROOT = path.resolve(import.meta.dirname, '../..');
const { values } = parseArgs({
  options: {
    clients: { type: 'string', default: '200' },
    duration: { type: 'string', default: '120' },
    'poll-ms': { type: 'string', default: '500' },
    readers: { type: 'string', default: '500' },
    'read-duration': { type: 'string', default: '30' },
    quiet: { type: 'string', default: '60' },
    model: { type: 'string' },
    out: { type: 'string', default: path.join(ROOT, 'bench/results') },
  },
});
const CLIENTS = Number(values.clients);
const DURATION_S = Number(values.duration);
const POLL_MS = Number(values['poll-ms']);
const READERS = Number(values.readers);
const READ_S = Number(values['read-duration']);
const QUIET_S = Number(values.quiet);
const python = process.env.KLEINSERVE_PYTHON || path.join(ROOT, '.venv/bin/python');
const CREATE_PATH = '/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs';
const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

// ---- small helpers -------------------------------------------------------------------------------
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
function stats(xs: number[]) {
  if (!xs.length) return { n: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const at = (p: number) => Math.round(s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))] * 10) / 10;
  return { n: s.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1) };
}
function rssMiB(pid: number | undefined): number | null {
  if (!pid) return null;
  try {
    const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'))!;
    return Math.round(Number(line.split(/\s+/)[1]) / 1024);
  } catch {
    return null;
  }
}

class Route {
  lat: number[] = [];
  statuses: Record<string, number> = {};
  netErrors = 0;
  record(ms: number, status: number) {
    this.lat.push(ms);
    this.statuses[status] = (this.statuses[status] ?? 0) + 1;
  }
  summary() {
    const errors = Object.entries(this.statuses).filter(([s]) => Number(s) >= 400).reduce((a, [, n]) => a + n, 0);
    return { ...stats(this.lat), statuses: this.statuses, http_errors: errors, network_errors: this.netErrors };
  }
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-load-'));
  let model = values.model;
  if (!model) {
    model = path.join(tmp, 'tiny');
    if (spawnSync(python, ['-m', 'kleinserve_engine', 'make-tiny-model', model], { stdio: 'inherit' }).status !== 0) throw new Error('make-tiny-model failed');
  }
  const keys = Array.from({ length: CLIENTS }, (_, i) => `load_client_${i}`);
  const server = spawn(process.execPath, [path.join(ROOT, 'server/bin/kleinserve.mjs'), 'serve', '--model', model, '--port', '0', '--data', path.join(tmp, 'data')], {
    env: { ...process.env, LOG_LEVEL: 'warn', KLEINSERVE_API_KEYS: keys.join(',') },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url: string = await new Promise((resolve) =>
    readline.createInterface({ input: server.stdout! }).on('line', (l) => {
      const m = JSON.parse(l);
      if (m.event === 'listening') resolve(m.url);
    }),
  );
  let enginePid: number | undefined;
  for (;;) {
    const h = await fetch(`${url}/v1/health`).then((r) => r.json()).catch(() => ({}));
    if (h.ok) {
      enginePid = h.engine?.pid;
      break;
    }
    await sleep(200);
  }

  const t0 = Date.now();
  const rss: { t_s: number; phase: string; server_mib: number | null; engine_mib: number | null }[] = [];
  let phase = 'idle';
  const sampler = setInterval(() => rss.push({ t_s: Math.round((Date.now() - t0) / 1000), phase, server_mib: rssMiB(server.pid), engine_mib: rssMiB(enginePid) }), 1000);

  // ---- scenario 1: create + poll --------------------------------------------------------------------
  const jpeg = await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: 200, g: 80, b: 40 } } }).jpeg().toBuffer();
  const body = JSON.stringify({ input: { prompt: 'make it blue', image_urls: [`data:image/jpeg;base64,${jpeg.toString('base64')}`], steps: 1 } });
  const dispatcher = new Agent({ connections: CLIENTS * 2, keepAliveTimeout: 4000 });
  const routes = { create: new Route(), poll: new Route(), health: new Route() };
  const outcome: Record<string, number> = {};
  const finished: string[] = [];
  let maxQueued = 0;
  const endAt = Date.now() + DURATION_S * 1000;
  phase = 'create+poll';

  async function timed(route: Route, path: string, init: { method?: 'GET' | 'POST'; headers?: Record<string, string>; body?: string }) {
    const t = performance.now();
    try {
      const res = await request(`${url}${path}`, { dispatcher, method: init.method ?? 'GET', headers: init.headers, body: init.body });
      const text = await res.body.text();
      route.record(performance.now() - t, res.statusCode);
      return { status: res.statusCode, json: text ? JSON.parse(text) : null, headers: res.headers };
    } catch {
      route.netErrors++;
      return null;
    }
  }

  async function client(key: string) {
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    while (Date.now() < endAt) {
      const created = await timed(routes.create, CREATE_PATH, { method: 'POST', headers, body });
      if (!created || created.status !== 200) {
        outcome[`create_${created?.status ?? 'neterr'}`] = (outcome[`create_${created?.status ?? 'neterr'}`] ?? 0) + 1;
        await sleep(created?.status === 429 ? Number(created.headers['retry-after'] ?? 1) * 1000 : 500);
        continue;
      }
      const id = created.json.id as string;
      for (;;) {
        await sleep(POLL_MS);
        const r = await timed(routes.poll, `/v1/runs/${id}`, { headers });
        if (r?.status === 200 && TERMINAL.has(r.json.status_code)) {
          outcome[r.json.status_code] = (outcome[r.json.status_code] ?? 0) + 1;
          if (r.json.status_code === 'succeeded' && finished.length < 5000) finished.push(id);
          break;
        }
        // After the load window, keep polling so every run is seen to its end (queued runs must not fail).
        if (Date.now() > endAt + 300_000) {
          outcome.still_pending_after_5_min = (outcome.still_pending_after_5_min ?? 0) + 1;
          break;
        }
      }
    }
  }

  const prober = (async () => {
    while (Date.now() < endAt) {
      const h = await timed(routes.health, '/v1/health', {});
      maxQueued = Math.max(maxQueued, h?.json?.engine?.queue_depth ?? 0);
      await sleep(500);
    }
  })();
  const s1Start = Date.now();
  await Promise.all([...keys.map(client), prober]);
  const s1Seconds = (Date.now() - s1Start) / 1000;
  const succeeded = outcome.succeeded ?? 0;

  // ---- scenario 2: 500 concurrent GET /v1/runs/{id} ----------------------------------------------------
  phase = 'reads';
  const ids = finished.length ? finished : ['00000000-0000-7000-8000-000000000000'];
  let next = 0;
  const reads = await autocannon({
    url,
    connections: READERS,
    duration: READ_S,
    headers: { authorization: `Bearer ${keys[0]}` },
    requests: [{ method: 'GET', setupRequest: (req: any) => ({ ...req, path: `/v1/runs/${ids[next++ % ids.length]}` }) }],
  });

  // ---- quiet: no load; RSS must come back down, not keep growing ---------------------------------------
  phase = 'after load';
  await sleep(QUIET_S * 1000);
  clearInterval(sampler);
  server.kill('SIGTERM');
  await dispatcher.close();

  const phaseRss = (p: string) => {
    const xs = rss.filter((r) => r.phase === p).map((r) => r.server_mib ?? 0);
    return xs.length ? { first: xs[0], max: Math.max(...xs), last: xs[xs.length - 1] } : null;
  };
  const cpu = os.cpus();
  const result = {
    benchmark: 'load: create+poll clients, then concurrent run reads (issue 7 item 6)',
    machine: `${cpu[0]?.model ?? 'unknown CPU'}, ${cpu.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, Node ${process.version}`,
    date: new Date().toISOString(),
    command: `node --import tsx bench/load/load.ts --clients ${CLIENTS} --duration ${DURATION_S} --poll-ms ${POLL_MS} --readers ${READERS} --read-duration ${READ_S} --quiet ${QUIET_S}`,
    setup: `real server + tiny engine (random weights), 64x64 JPEG inline, 1 step, one API key per client, default quotas`,
    create_poll: {
      clients: CLIENTS,
      duration_s: DURATION_S,
      wall_s: Math.round(s1Seconds),
      runs_succeeded: succeeded,
      runs_per_s: Math.round((succeeded / s1Seconds) * 100) / 100,
      outcomes: outcome,
      max_engine_queue_depth_seen: maxQueued,
      routes: { 'POST create': routes.create.summary(), 'GET /v1/runs/{id} (poll)': routes.poll.summary(), 'GET /v1/health': routes.health.summary() },
    },
    reads: {
      connections: READERS,
      duration_s: READ_S,
      requests: reads.requests.total,
      requests_per_s: reads.requests.average,
      latency_ms: { p50: reads.latency.p50, p99: reads.latency.p99, max: reads.latency.max },
      non_2xx: reads.non2xx,
      errors: reads.errors,
      timeouts: reads.timeouts,
    },
    rss_mib: { idle_before: rss.find((r) => r.phase === 'create+poll')?.server_mib ?? null, by_phase: Object.fromEntries(['create+poll', 'reads', 'after load'].map((p) => [p, phaseRss(p)])) },
    rss_series: rss,
  };
  fs.mkdirSync(values.out!, { recursive: true });
  const stamp = result.date.slice(0, 16).replace(/[:T]/g, '-');
  const base = path.join(values.out!, `load-${stamp}`);
  fs.writeFileSync(`${base}.json`, JSON.stringify(result, null, 2) + '\n');
  fs.writeFileSync(`${base}.md`, markdown(result));
  console.log(markdown(result));
  fs.rmSync(tmp, { recursive: true, force: true });
  process.exit(0);
}

function markdown(r: any): string {
  const row = (name: string, s: any) => `| ${name} | ${s.n ?? 0} | ${s.p50 ?? '-'} | ${s.p99 ?? '-'} | ${s.max ?? '-'} | ${s.http_errors ?? 0} (${Object.entries(s.statuses ?? {}).map(([k, v]) => `${k}: ${v}`).join(', ')}) | ${s.network_errors ?? 0} |`;
  const cp = r.create_poll;
  const ph = r.rss_mib.by_phase;
  const series = r.rss_series.filter((_: any, i: number) => i % 10 === 0).map((x: any) => `${x.t_s}s ${x.phase}: ${x.server_mib} MiB (engine ${x.engine_mib})`).join('\n- ');
  return `# Load benchmark

${r.benchmark}. ${r.setup}.

- Machine: ${r.machine}
- Date: ${r.date}
- Command: \`${r.command}\`

## Scenario 1: ${cp.clients} clients creating runs and polling for ${cp.duration_s} s

Runs succeeded: **${cp.runs_succeeded}** in ${cp.wall_s} s = **${cp.runs_per_s} runs/s**. Outcomes: ${JSON.stringify(cp.outcomes)}. Largest engine queue seen: ${cp.max_engine_queue_depth_seen}.

| route | requests | p50 ms | p99 ms | max ms | HTTP errors (statuses) | network errors |
|---|---|---|---|---|---|---|
${Object.entries(cp.routes).map(([k, v]) => row(k, v)).join('\n')}

## Scenario 2: ${r.reads.connections} concurrent GET /v1/runs/{id} for ${r.reads.duration_s} s (autocannon)

${r.reads.requests} requests, ${r.reads.requests_per_s} req/s; latency p50 ${r.reads.latency_ms.p50} ms, p99 ${r.reads.latency_ms.p99} ms, max ${r.reads.latency_ms.max} ms; non-2xx ${r.reads.non_2xx}, errors ${r.reads.errors}, timeouts ${r.reads.timeouts}.

## Server RSS (MiB)

Before load: ${r.rss_mib.idle_before}. create+poll: ${JSON.stringify(ph['create+poll'])}. reads: ${JSON.stringify(ph.reads)}. After load stops: ${JSON.stringify(ph['after load'])}.

Every 10 s:
- ${series}
`;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
