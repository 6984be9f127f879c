// `kleinserve edit`: single edits (-o) and batch edits over files, directories and globs, with a progress bar
// driven by each run's SSE stream (the engine's real steps). Built on the TypeScript SDK, so it retries,
// fails over across --server URLs and never creates a run twice on a retry.
import fs from 'node:fs';
import path from 'node:path';
import { Kleinserve, KleinserveError, RunFailedError, type Run, type RunEvent } from '@kleinserve/sdk';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { elsewhere, expandInputs, outputPathFor } from './expand.ts';
import { ProgressBar } from './progress.ts';

const FORMATS: Record<string, 'jpeg' | 'png' | 'webp'> = { '.jpg': 'jpeg', '.jpeg': 'jpeg', '.png': 'png', '.webp': 'webp' };
const EXT = { jpeg: 'jpg', png: 'png', webp: 'webp' } as const;

interface Common {
  client: Kleinserve;
  keySource: KeySource;
  prompt: string;
  seed?: number;
  steps?: number;
  bar: ProgressBar;
}

function wholeNumber(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) throw new InvalidArgumentError('expected a whole number.');
  return n;
}

/** Where the client's key came from, so a refusal can say which setting to change. */
type KeySource = '--api-key' | 'KLEINSERVE_API_KEY' | null;

/** One message per failure: a 422's fields are listed once (the API's message repeats them, so it is not printed). */
export function describeFailure(err: unknown, keySource: KeySource): string {
  if (err instanceof KleinserveError) {
    if (err.status === 401) {
      if (keySource) return `the server refused the API key given by ${keySource} (401 ${err.code}); use a key the server accepts`;
      const plural = process.env.KLEINSERVE_API_KEYS
        ? ' (KLEINSERVE_API_KEYS is set, but that is the server\'s list of accepted keys; a client does not read it)'
        : '';
      return `the server needs an API key: pass --api-key KEY or set KLEINSERVE_API_KEY${plural}`;
    }
    if (err.errors.length) {
      const fields = err.errors.map((e) => `\n  ${e.field ?? e.path ?? '(request)'}: ${e.reason ?? e.message ?? e.code ?? 'invalid'}`);
      return `the server refused the request (${err.status} ${err.code}):${fields.join('')}`;
    }
    return `${err.code}: ${err.message}`;
  }
  if (err instanceof RunFailedError) return `${err.code}: ${err.run.error?.message ?? err.run.failure_message ?? err.message}`;
  return err instanceof Error ? err.message : String(err);
}

/** Local files are checked before anything is sent, so a typo names the file instead of failing as bad base64. */
function checkLocal(flag: string, values: string[]): void {
  for (const v of values) {
    if (/^(https?:|data:)/i.test(v)) continue;
    if (!fs.existsSync(v)) throw new Error(`${flag} ${v}: no such file${elsewhere(v)}`);
    if (!fs.statSync(v).isFile()) throw new Error(`${flag} ${v}: not a file${elsewhere(v)}`);
  }
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
        c.bar.log(`${file}: FAILED ${describeFailure(err, c.keySource)}`);
      }
      redraw(name);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, files.length) }, worker));
  c.bar.done();
  console.log(`${files.length - failed} of ${files.length} edited${failed ? `, ${failed} failed` : ''}`);
  if (failed) process.exitCode = 1;
}

interface EditFlags {
  image?: string[];
  ref?: string[];
  prompt: string;
  seed?: number;
  steps?: number;
  output?: string;
  suffix: string;
  format?: 'jpeg' | 'png' | 'webp';
  concurrency: number;
  server?: string[];
  apiKey?: string;
}

const DEFAULT_SERVER = 'http://127.0.0.1:8080';
const repeat = (value: string, previous: string[] = []) => [...previous, value];

/** Registers `kleinserve edit` on the program. */
export function editCommand(program: Command): Command {
  return program
    .command('edit')
    .description('edit images through a running kleinserve: one edit to -o FILE, or a batch over files, directories and globs')
    .argument('[inputs...]', 'batch mode: image files, directories or quoted globs ("photos/**/*.jpg"); each is edited with --prompt')
    .requiredOption('--prompt <text>', 'what to do to the image(s)')
    .option('--image <file|url>', 'single mode: an input image; repeat for up to 4 references', repeat)
    .option('-o, --output <file>', 'single mode: where to write the result (its extension picks the format)')
    .option('--ref <file|url>', 'batch mode: extra reference image(s) sent with every input; repeatable', repeat)
    .addOption(new Option('--seed <n>', 'seed (the run reports the one it used)').argParser(wholeNumber).default(undefined, 'random'))
    .addOption(new Option('--steps <n>', 'denoising steps, 1-50').argParser(wholeNumber).default(undefined, "the server's, 4 for klein"))
    .addOption(new Option('--format <format>', 'output format').choices(['jpeg', 'png', 'webp']).default(undefined, "the output file's extension, else jpeg"))
    .option('--suffix <text>', 'batch mode: appended to each output name (inputs ending in it are skipped)', '.edited')
    .option('--concurrency <n>', 'batch mode: runs in flight at once', wholeNumber, 2)
    .addOption(new Option('--server <url>', 'server base URL; repeat to fail over in order').env('KLEINSERVE_URL').argParser(repeat)
      .default(undefined, DEFAULT_SERVER))
    .addOption(new Option('--api-key <key>', 'CLIENT key to send (the one serve printed on first start)').env('KLEINSERVE_API_KEY'))
    .addHelpText('after', `
Examples:
  kleinserve edit --image photo.jpg --prompt "make it a watercolor" -o out.jpg
  kleinserve edit --prompt "make it a watercolor" --ref style.png photos/ "shots/**/*.png"

The client sends ONE key (--api-key or KLEINSERVE_API_KEY, singular); KLEINSERVE_API_KEYS (plural) is the
server's list of accepted keys and is not read here.`)
    .action(async (inputs: string[], flags: EditFlags, cmd: Command) => runEdit(inputs, flags, cmd));
}

async function runEdit(positionals: string[], values: EditFlags, cmd: Command): Promise<void> {
  const keySource: KeySource = values.apiKey === undefined ? null : cmd.getOptionValueSource('apiKey') === 'env' ? 'KLEINSERVE_API_KEY' : '--api-key';
  const c: Common = {
    client: new Kleinserve({ baseUrl: values.server ?? [DEFAULT_SERVER], apiKey: values.apiKey ?? '' }),
    keySource,
    prompt: values.prompt,
    seed: values.seed,
    steps: values.steps,
    bar: new ProgressBar(),
  };
  if (!positionals.length && (!values.image?.length || !values.output)) {
    cmd.error('error: edit needs --image FILE and -o OUT (one edit), or inputs to batch-edit', { exitCode: 64, code: 'kleinserve.usage' });
  }
  checkLocal('--image', values.image ?? []);
  checkLocal('--ref', values.ref ?? []);
  try {
    if (positionals.length) {
      const files = expandInputs(positionals, values.suffix);
      if (!files.length) throw new Error(`no images found in ${positionals.join(' ')}`);
      await batch(c, files, [...(values.ref ?? []), ...(values.image ?? [])], values.suffix, Math.max(1, values.concurrency), values.format);
      return;
    }
    await single(c, values.image!, values.output!, values.format);
  } catch (err) {
    c.bar.done();
    throw new Error(describeFailure(err, keySource));
  }
}
