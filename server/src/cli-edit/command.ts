// `kleinserve edit`: single edits (-o) and batch edits over files, directories and globs, with a progress bar
// driven by each run's SSE stream (the engine's real steps). Built on the TypeScript SDK, so it retries,
// fails over across --server URLs and never creates a run twice on a retry.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Kleinserve, KleinserveError, RunFailedError, type Run, type RunEvent } from '../../../sdk/src/index.ts';
import { expandInputs, outputPathFor } from './expand.ts';
import { ProgressBar } from './progress.ts';

export const EDIT_USAGE = `kleinserve edit --image FILE|URL [--image ...] --prompt TEXT -o out.jpg [options]
  kleinserve edit --prompt TEXT [--ref FILE|URL]... FILE|DIR|GLOB... [--suffix .edited] [--concurrency 2] [options]
    options: --seed N --steps N --format jpeg|png|webp --server URL (repeat for failover) --api-key K`;

const FORMATS: Record<string, 'jpeg' | 'png' | 'webp'> = { '.jpg': 'jpeg', '.jpeg': 'jpeg', '.png': 'png', '.webp': 'webp' };
const EXT = { jpeg: 'jpg', png: 'png', webp: 'webp' } as const;

interface Common {
  client: Kleinserve;
  prompt: string;
  seed?: number;
  steps?: number;
  bar: ProgressBar;
}

function intArg(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name}: expected a whole number, got ${JSON.stringify(value)}`);
  return n;
}

function describe(err: unknown): string {
  if (err instanceof KleinserveError) {
    const fields = err.errors.map((e) => `\n    ${e.field}: ${e.reason ?? e.message ?? ''}`).join('');
    return `${err.code}: ${err.message}${fields}`;
  }
  if (err instanceof RunFailedError) return `${err.code}: ${err.run.failure_message ?? err.message}`;
  return err instanceof Error ? err.message : String(err);
}

/** One run from creation to bytes; reports every status and engine step to `onEvent`. */
async function runOne(c: Common, images: string[], format: 'jpeg' | 'png' | 'webp', onEvent: (e: RunEvent) => void) {
  return c.client.edit(
    { prompt: c.prompt, images, seed: c.seed, steps: c.steps, output_format: format },
    { onProgress: onEvent },
  );
}

function stepLabel(e: RunEvent): { fraction: number; text: string } | null {
  if (e.type === 'progress') return { fraction: e.step / e.steps, text: `step ${e.step}/${e.steps}` };
  if (e.type === 'status') return { fraction: 0, text: e.status };
  return null;
}

function timingLine(run: Run): string {
  const t = run.output?.timing ?? {};
  const pick = ['queue_ms', 'text_encode_ms', 'vae_encode_ms', 'denoise_ms', 'decode_ms', 'total_ms'];
  return pick.filter((k) => typeof t[k] === 'number').map((k) => `${k.replace(/_ms$/, '')} ${Math.round(t[k]!)} ms`).join(' · ');
}

async function single(c: Common, images: string[], output: string, formatFlag?: string) {
  const format = (formatFlag as 'jpeg' | 'png' | 'webp' | undefined) ?? FORMATS[path.extname(output).toLowerCase()] ?? 'jpeg';
  let fraction = 0;
  const { run, images: bytes } = await runOne(c, images, format, (e) => {
    const s = stepLabel(e);
    if (!s) return;
    if (e.type === 'progress') fraction = s.fraction;
    c.bar.render(fraction, s.text);
  });
  c.bar.done();
  fs.writeFileSync(output, bytes[0]);
  const out = run.output!.outputs[0];
  console.log(`wrote ${output} (${out.width}x${out.height} ${out.content_type}, seed ${run.output!.seed}) run ${run.id}`);
  console.log(`  ${timingLine(run)}`);
}

async function batch(c: Common, files: string[], refs: string[], suffix: string, concurrency: number, formatFlag?: string) {
  const progress = new Map<string, number>();
  let done = 0;
  let failed = 0;
  const redraw = (label: string) => {
    const partial = [...progress.values()].reduce((a, b) => a + b, 0);
    c.bar.render((done + partial) / files.length, `${done}/${files.length} · ${label}`);
  };
  const queue = [...files];
  const worker = async () => {
    for (let file = queue.shift(); file; file = queue.shift()) {
      const name = path.basename(file);
      const format = (formatFlag as 'jpeg' | 'png' | 'webp' | undefined) ?? FORMATS[path.extname(file).toLowerCase()] ?? 'jpeg';
      const target = outputPathFor(file, suffix, EXT[format]);
      progress.set(file, 0);
      try {
        const { run, images } = await runOne(c, [file, ...refs], format, (e) => {
          const s = stepLabel(e);
          if (!s) return;
          if (e.type === 'progress') progress.set(file, s.fraction);
          redraw(`${name} ${s.text}`);
        });
        fs.writeFileSync(target, images[0]);
        progress.delete(file);
        done++;
        c.bar.log(`${file} -> ${target} (${timingLine(run)})`);
      } catch (err) {
        progress.delete(file);
        done++;
        failed++;
        c.bar.log(`${file}: FAILED ${describe(err)}`);
      }
      redraw(name);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, files.length) }, worker));
  c.bar.done();
  console.log(`${files.length - failed} of ${files.length} edited${failed ? `, ${failed} failed` : ''}`);
  if (failed) process.exitCode = 1;
}

export async function editCommand(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      image: { type: 'string', multiple: true },
      ref: { type: 'string', multiple: true },
      prompt: { type: 'string' },
      seed: { type: 'string' },
      steps: { type: 'string' },
      output: { type: 'string', short: 'o' },
      suffix: { type: 'string', default: '.edited' },
      format: { type: 'string' },
      concurrency: { type: 'string', default: '2' },
      server: { type: 'string', multiple: true },
      'api-key': { type: 'string' },
    },
  });
  if (!values.prompt) throw new Error(`edit needs --prompt\n${EDIT_USAGE}`);
  if (values.format && !['jpeg', 'png', 'webp'].includes(values.format)) throw new Error('--format: use jpeg, png or webp');
  const servers = values.server ?? [process.env.KLEINSERVE_URL ?? 'http://127.0.0.1:8080'];
  const c: Common = {
    client: new Kleinserve({ baseUrl: servers, apiKey: values['api-key'] ?? process.env.KLEINSERVE_API_KEY }),
    prompt: values.prompt,
    seed: intArg('seed', values.seed),
    steps: intArg('steps', values.steps),
    bar: new ProgressBar(),
  };
  try {
    if (positionals.length) {
      const files = expandInputs(positionals, values.suffix);
      if (!files.length) throw new Error(`no images found in ${positionals.join(' ')}`);
      await batch(c, files, [...(values.ref ?? []), ...(values.image ?? [])], values.suffix, intArg('concurrency', values.concurrency) || 1, values.format);
      return;
    }
    if (!values.image?.length || !values.output) throw new Error(`edit needs --image and -o, or files/dirs/globs to batch-edit\n${EDIT_USAGE}`);
    await single(c, values.image, values.output, values.format);
  } catch (err) {
    c.bar.done();
    throw new Error(describe(err));
  }
}
