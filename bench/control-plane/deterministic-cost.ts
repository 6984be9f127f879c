// What `deterministic` costs: bursts of N concurrent same-shaped runs (different seeds and prompts) through the
// real server + engine, batched by default vs every run `deterministic: true` (never batched, prompt encoded
// alone), alternating the two modes burst by burst in one sitting so that machine load hits both alike.
// Usage: node --import tsx bench/control-plane/deterministic-cost.ts [--reps 5] [--burst 8] [--size 512] [--steps 2] [--model DIR]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { KEY, machine as machineLine, photo, ROOT, startServer } from './server-harness.ts';

const { values } = parseArgs({
  options: {
    reps: { type: 'string', default: '5' },
    burst: { type: 'string', default: '8' },
    size: { type: 'string', default: '512' },
    steps: { type: 'string', default: '2' },
    model: { type: 'string' },
    out: { type: 'string', default: path.join(ROOT, 'bench/results/deterministic-cost') },
  },
});
const REPS = Number(values.reps);
const BURST = Number(values.burst);
const SIZE = Number(values.size);
const STEPS = Number(values.steps);
const MODES = ['batched', 'deterministic'] as const;
type Mode = (typeof MODES)[number];

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const loadavg = () => os.loadavg().map((x) => round(x, 2));

/** The engine's denoise batch histogram (count and sum of images), read from the server's /metrics. */
async function batchHistogram(url: string): Promise<{ batches: number; images: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const value = (name: string) => Number(text.match(new RegExp(`^${name}\\s+(\\S+)$`, 'm'))?.[1] ?? NaN);
  return { batches: value('kleinserve_engine_batch_size_count'), images: value('kleinserve_engine_batch_size_sum') };
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-bench-det-'));
  // --concurrency = the burst, so every run of a burst reaches the engine's batcher together.
  const { server, url } = await startServer({ tmp, model: values.model, args: ['--concurrency', String(BURST)], env: { ...process.env, LOG_LEVEL: 'warn' } });
  const image = `data:image/jpeg;base64,${(await photo(SIZE)).toString('base64')}`;
  const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', prefer: 'wait' };

  async function run(input: Record<string, unknown>): Promise<{ ms: number; engineMs: number }> {
    const t0 = performance.now();
    let res = await fetch(`${url}/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs`, { method: 'POST', headers, body: JSON.stringify({ input }) });
    let body = await res.json();
    while (body.status_code && !['succeeded', 'failed', 'canceled'].includes(body.status_code)) {
      await new Promise((r) => setTimeout(r, 100));
      res = await fetch(`${url}/v1/runs/${body.id}`, { headers });
      body = await res.json();
    }
    if (body.status_code !== 'succeeded') throw new Error(`run ended ${body.status_code}: ${JSON.stringify(body.error ?? body)}`);
    return { ms: performance.now() - t0, engineMs: body.output.timing.engine_total_ms };
  }

  async function burst(mode: Mode, rep: number) {
    const before = await batchHistogram(url);
    const t0 = performance.now();
    const runs = await Promise.all(
      Array.from({ length: BURST }, (_, i) =>
        run({ prompt: `a watercolor painting, variant ${i}`, image_urls: [image], seed: (rep + 1) * 100 + i, steps: STEPS, output_format: 'png', ...(mode === 'deterministic' ? { deterministic: true } : {}) }),
      ),
    );
    const wallMs = performance.now() - t0;
    const after = await batchHistogram(url);
    const batches = after.batches - before.batches;
    return {
      mode,
      rep,
      wall_ms: round(wallMs),
      images_per_s: round(BURST / (wallMs / 1000), 3),
      run_ms_median: round(median(runs.map((r) => r.ms))),
      run_ms_max: round(Math.max(...runs.map((r) => r.ms))),
      engine_total_ms_median: round(median(runs.map((r) => r.engineMs))),
      mean_batch_size: round((after.images - before.images) / batches, 2),
      batches,
    };
  }

  const loadBefore = loadavg();
  const bursts: Awaited<ReturnType<typeof burst>>[] = [];
  try {
    process.stderr.write('bench: warm-up (one burst of each mode)\n');
    for (const mode of MODES) await burst(mode, -1);
    for (let rep = 0; rep < REPS; rep++) {
      // Alternate which mode goes first, so a load trend within a repetition does not favour one mode.
      for (const mode of rep % 2 ? [...MODES].reverse() : MODES) {
        const b = await burst(mode, rep);
        process.stderr.write(`bench: rep ${rep} ${mode}: ${b.wall_ms} ms, mean batch ${b.mean_batch_size}, load ${loadavg()[0]}\n`);
        bursts.push(b);
      }
    }
  } finally {
    // A failed run must not leave the server and its engine behind.
    server.kill('SIGTERM');
  }
  const loadAfter = loadavg();

  const per = (mode: Mode) => {
    const bs = bursts.filter((b) => b.mode === mode);
    return {
      wall_ms_median: round(median(bs.map((b) => b.wall_ms))),
      wall_ms_min: round(Math.min(...bs.map((b) => b.wall_ms))),
      wall_ms_max: round(Math.max(...bs.map((b) => b.wall_ms))),
      images_per_s_median: round(median(bs.map((b) => b.images_per_s)), 3),
      run_ms_median: round(median(bs.map((b) => b.run_ms_median))),
      mean_batch_size: round(median(bs.map((b) => b.mean_batch_size)), 2),
    };
  };
  const summary = { batched: per('batched'), deterministic: per('deterministic') };
  // Paired by repetition: each deterministic burst against the batched burst next to it.
  const ratios = Array.from({ length: REPS }, (_, rep) => {
    const [b, d] = MODES.map((m) => bursts.find((x) => x.rep === rep && x.mode === m)!);
    return d.wall_ms / b.wall_ms;
  });
  const machine = machineLine();
  const command = `node --import tsx bench/control-plane/deterministic-cost.ts --reps ${REPS} --burst ${BURST} --size ${SIZE} --steps ${STEPS}`;
  const result = {
    benchmark: `deterministic cost: bursts of ${BURST} concurrent ${SIZE}x${SIZE} edit runs (different seeds and prompts), batched default vs deterministic: true`,
    scope: 'CPU, tiny random-weight model: the batching a CPU gives up, not a GPU figure (the engine benchmark stage 2 measures that on a GPU)',
    machine,
    date: new Date().toISOString(),
    model: 'tiny (random weights)',
    steps: STEPS,
    burst: BURST,
    reps: REPS,
    command,
    load_average_before_after: [loadBefore, loadAfter],
    summary,
    deterministic_over_batched_wall: { median: round(median(ratios), 2), min: round(Math.min(...ratios), 2), max: round(Math.max(...ratios), 2) },
    bursts,
  };
  fs.mkdirSync(path.dirname(values.out!), { recursive: true });
  fs.writeFileSync(`${values.out}.json`, JSON.stringify(result, null, 2) + '\n');
  const row = (m: Mode) => {
    const s = summary[m];
    return `| ${m} | ${s.wall_ms_median} | ${s.wall_ms_min}–${s.wall_ms_max} | ${s.images_per_s_median} | ${s.run_ms_median} | ${s.mean_batch_size} |`;
  };
  const r = result.deterministic_over_batched_wall;
  const md = `# Cost of deterministic runs

${result.benchmark}; ${REPS} repetitions after one warm-up burst of each, the two modes alternating in one sitting.

**Scope: ${result.scope}.**

- Machine: ${machine}
- Date: ${result.date}
- Input: ${SIZE}x${SIZE} JPEG inline, PNG output ${SIZE}x${SIZE}; model ${result.model}, ${STEPS} step(s); server \`--concurrency ${BURST}\`, engine's default batch rule
- Command: \`${command}\`
- Load average (1/5/15 min) before and after: ${JSON.stringify(result.load_average_before_after)} — other work shares
  the cores and shows up in every figure; the paired ratio below is the figure to read.

| mode | burst wall ms (median) | min–max | images/s | per-run ms (median) | mean batch size |
|---|---|---|---|---|---|
${row('batched')}
${row('deterministic')}

Deterministic burst wall time / batched, paired by repetition: median **${r.median}x** (min ${r.min}x, max ${r.max}x).

What it costs is the batching it gives up (every deterministic run is a batch of one) plus a text-encoder pass
per run (its prompt is never read from the cache). This is a small-model, CPU-bound figure on a shared machine;
on a GPU the gap is the batch sweep's (engine benchmark stage 2, (d): batched / alone / deterministic).
`;
  fs.writeFileSync(`${values.out}.md`, md);
  console.log(md);
  fs.rmSync(tmp, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
