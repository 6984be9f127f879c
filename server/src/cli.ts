// The `kleinserve` command: server roles (serve, api, worker, status), the `edit` client and make-tiny-model.
// Every flag is declared once here with its default and environment variable, so `--help` documents exactly
// what is parsed; the role modules load lazily, so `edit` never pulls in the server and `serve` never pg/BullMQ.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import { defaultPython, loadConfig } from './config.ts';
import { editCommand } from './cli-edit/command.ts';

export const VERSION: string = JSON.parse(
  fs.readFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), 'utf8'),
).version;

/** Wrong usage (unknown flag, missing operand): exit 64 (EX_USAGE) after the command's usage line. */
export class UsageError extends Error {}

const KEYS_NOTE = `API keys: the server accepts the keys given by --api-key (repeatable) or KLEINSERVE_API_KEYS
(plural, comma-separated). A client (kleinserve edit, the SDK) sends ONE key, from its own --api-key
or KLEINSERVE_API_KEY (singular).`;

const collect = (value: string, previous: string[] = []) => [...previous, ...value.split(',').map((s) => s.trim()).filter(Boolean)];
const repeat = (value: string, previous: string[] = []) => [...previous, value];
/** Commander hands the default (a string) to the first call: a given --model replaces it, later ones add up. */
const collectModels = (value: string, previous: string | string[]) => collect(value, Array.isArray(previous) ? previous : []);

/** Flags every role that serves the API or drives an engine shares. */
function roleOptions(cmd: Command, opts: { engine: boolean }): Command {
  const engineOnly = (o: Option) => (opts.engine ? o : o.hideHelp());
  return cmd
    .addOption(engineOnly(new Option('--model <[public=]dir|repo|tiny>', 'checkpoint to serve: diffusers-layout directory, Hugging Face repo id, "tiny" or "tiny-base" ' +
      '(random weights: output is noise); prefix a public id to choose its routes (flux-2-klein-base-4b=/models/base); repeat (serve) for several models, one engine each')
      .env('KLEINSERVE_MODEL').argParser(collectModels).default('black-forest-labs/FLUX.2-klein-4B')))
    .addOption(new Option('--host <address>', 'address to listen on (loopback unless you open it)').env('KLEINSERVE_HOST').default('127.0.0.1'))
    .addOption(new Option('--port <n>', 'port to listen on; 0 picks a free one').env('PORT').default('8080'))
    .addOption(new Option('--data <dir>', 'data directory: SQLite runs, stored images, engine socket, key hashes').env('KLEINSERVE_DATA').default('.data'))
    .addOption(new Option('--api-key <key>', 'SERVER key that clients must send; repeat for several')
      .env('KLEINSERVE_API_KEYS').argParser(collect).default([], 'one is generated on first start and printed once'))
    .addOption(new Option('--metrics-require-key <when>', 'require an API key on GET /metrics; auto: yes unless --host is loopback')
      .choices(['auto', 'yes', 'no']).env('KLEINSERVE_METRICS_REQUIRE_KEY').default('auto'))
    .addOption(engineOnly(new Option('--concurrency <n>', 'runs handed to the engine at once (its batcher groups them)').env('KLEINSERVE_CONCURRENCY').default('4')))
    .addOption(engineOnly(new Option('--python <path>', 'Python 3.11+ with the kleinserve-engine package installed')
      .env('KLEINSERVE_PYTHON').default(undefined, "the checkout's .venv/bin/python, else python3 on PATH")))
    .addOption(engineOnly(new Option('--lora-dir <dir>', 'directory of LoRA .safetensors files that requests may name by file name')
      .env('KLEINSERVE_LORA_DIR').default(undefined, 'none: only Hugging Face ids and URLs')))
    .addOption(engineOnly(new Option('--lora-cache-mb <n>', 'disk bound of downloaded LoRAs, least recently used evicted first').env('KLEINSERVE_LORA_CACHE_MB').default('4096')))
    .addOption(engineOnly(new Option('--lora-max-mb <n>', 'largest LoRA file accepted, by the download and by the engine').env('KLEINSERVE_LORA_MAX_MB').default('1024')))
    .addOption(engineOnly(new Option('--lora-max-rank <n>', 'largest LoRA rank the engine accepts (a higher one is refused: rank_too_large)')
      .env('KLEINSERVE_LORA_MAX_RANK').default('128')))
    .addOption(engineOnly(new Option('--lora-host-cache-mb <n>', "engine's host memory for converted LoRAs, least recently used evicted first")
      .env('KLEINSERVE_LORA_HOST_CACHE_MB').default('2048')))
    .addOption(engineOnly(new Option('--lora-gpu-cache-mb <n>', "engine's GPU memory for LoRAs, least recently used evicted first")
      .env('KLEINSERVE_LORA_GPU_CACHE_MB').default('1024')))
    .addOption(engineOnly(new Option('--safety-checker <dir|repo>', 'image classifier run on every output (transformers AutoModelForImageClassification)')
      .env('KLEINSERVE_SAFETY_CHECKER').default(undefined, 'none: nsfw_detected is always false')))
    .addOption(engineOnly(new Option('--safety-policy <policy>', 'what a flagged output gets: reported, blurred, or the run fails NSFW_CONTENT')
      .choices(['flag', 'blur', 'fail']).env('KLEINSERVE_SAFETY_POLICY').default('flag')))
    .addOption(engineOnly(new Option('--safety-threshold <p>', 'unsafe-label probability at which an output is flagged').env('KLEINSERVE_SAFETY_THRESHOLD').default('0.5')))
    .addOption(engineOnly(new Option('--allow-safety-opt-out', 'let requests turn the checker off (enable_safety_checker: false)')
      .env('KLEINSERVE_ALLOW_SAFETY_OPT_OUT').default(false)))
    .addOption(engineOnly(new Option('--deterministic', 'byte-identical output for the same input and seed on every run: the engine batches nothing (slower under load); ' +
      'default off: a run batched with others is within 1/255 per channel of the same run alone, and requests may still ask (input.deterministic)')
      .env('KLEINSERVE_DETERMINISTIC').default(false)));
}

function clusterOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--database-url <url>', 'Postgres holding the runs (required)').env('DATABASE_URL'))
    .addOption(new Option('--storage <uri>', 'shared object store: file:DIR or s3://BUCKET[/PREFIX] (required)').env('KLEINSERVE_STORAGE'));
}

const SERVE_ENV = `
Other settings (environment only; the README's Configuration section lists them all):
  PUBLIC_BASE_URL               base of output URLs and callback bodies (default: the address it listens on)
  KLEINSERVE_CALLBACK_SECRET    HMAC key of Runflow-Signature (default: generated into the data directory)
  KLEINSERVE_FETCH_ALLOWLIST    hosts/CIDRs that image URLs may reach although not public (default: none)
  KLEINSERVE_MAX_ATTEMPTS       engine crashes a run survives before it fails (default: 3)
  KLEINSERVE_ENGINE_DEADLINE_MS engine silence that counts as a hang (default: 120000)
  LOG_LEVEL                     fatal|error|warn|info|debug|trace|silent (default: info)

${KEYS_NOTE}`;

/** Each option's help line ends with its default and its environment variable, including defaults that are computed. */
function describeOption(option: Option): string {
  const extra: string[] = option.mandatory ? ['required'] : [];
  if (option.argChoices) extra.push(`one of: ${option.argChoices.join(', ')}`);
  const value = option.defaultValue;
  const shown = option.defaultValueDescription ?? (typeof value === 'string' || typeof value === 'number' ? String(value) : undefined);
  if (shown !== undefined && !option.isBoolean()) extra.push(`default: ${shown}`);
  if (option.envVar) extra.push(`env: ${option.envVar}`);
  return extra.length ? `${option.description} (${extra.join('; ')})` : option.description;
}

/** Commander's camelCase attributes back to the flag names the config loaders take (`database-url`, `api-key`). */
function flagValues(cmd: Command): Record<string, unknown> {
  const opts = cmd.opts();
  const values: Record<string, unknown> = {};
  for (const option of cmd.options) {
    const value = opts[option.attributeName()];
    if (value !== undefined) values[option.long!.slice(2)] = value;
  }
  return values;
}

export function buildProgram(): Command {
  const program = new Command('kleinserve')
    .usage('<command> [options]')
    .description(
      'Self-hosted FLUX.2 [klein] 4B image editing with a Runflow-compatible API.\n' +
        'Run the server with `serve` (or `api` + `worker` for a cluster); edit images through it with `edit`.',
    )
    .version(VERSION, '-V, --version', 'print the version and exit')
    .helpOption('-h, --help', 'show help')
    .configureHelp({ optionDescription: describeOption })
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .addHelpText('after', `
Run \`kleinserve <command> --help\` for a command's options, their defaults and environment variables.

Examples:
  kleinserve serve --model tiny                      try it on CPU (noise output) at http://127.0.0.1:8080
  kleinserve serve --model /models/FLUX.2-klein-4B --host 0.0.0.0
  kleinserve edit --image photo.jpg --prompt "make it a watercolor" -o out.jpg --api-key KEY

${KEYS_NOTE}`);

  program.commandsGroup('Server:');
  roleOptions(
    program.command('serve').description('run everything in one process: API, playground, SQLite, local disk and a supervised engine'),
    { engine: true },
  )
    .addHelpText('after', SERVE_ENV)
    .action(async (_opts, cmd: Command) => {
      const cfg = loadConfig(flagValues(cmd));
      warnAboutClientKey();
      checkEngineInstalled(cfg.python);
      const { serve } = await import('./roles/serve.ts');
      await serve(cfg);
    });

  clusterOptions(roleOptions(program.command('api').description('a stateless API replica of a cluster (Postgres runs, BullMQ queues per region)'), { engine: false }))
    .addOption(new Option('--region <name=redis-url>', 'a region and its Redis; repeat, the first is home (required)').env('KLEINSERVE_REGIONS').argParser(collect))
    .addOption(new Option('--queue-limit <n>', 'runs waiting per region before backpressure').env('KLEINSERVE_REGION_QUEUE_LIMIT').default('1000'))
    .addOption(new Option('--backpressure <mode>', 'when a region is full: answer 429, or keep queueing').choices(['reject', 'queue']).env('KLEINSERVE_BACKPRESSURE').default('reject'))
    .addHelpText('after', `\n${KEYS_NOTE}`)
    .action(async (_opts, cmd: Command) => {
      const values = flagValues(cmd);
      const cfg = loadConfig(values);
      warnAboutClientKey();
      const { loadClusterConfig, apiRegions } = await import('./roles/cluster-config.ts');
      const cluster = loadClusterConfig(values);
      const { runApi } = await import('./roles/api.ts');
      await runApi(cfg, cluster, apiRegions(values));
    });

  clusterOptions(roleOptions(program.command('worker').description("take a region's runs from its queue and drive this machine's engine"), { engine: true }))
    .addOption(new Option('--region <name>', 'the region this worker serves (required)').env('KLEINSERVE_REGION').argParser(repeat))
    .addOption(new Option('--redis <url>', "the region's Redis (required)").env('REDIS_URL'))
    .action(async (_opts, cmd: Command) => {
      const values = flagValues(cmd);
      const cfg = loadConfig(values);
      checkEngineInstalled(cfg.python);
      const { loadClusterConfig, workerRegion } = await import('./roles/cluster-config.ts');
      const cluster = loadClusterConfig(values);
      const { runWorker } = await import('./roles/worker.ts');
      await runWorker(cfg, cluster, workerRegion(values));
    });

  program.command('status').description('the cluster at a glance: regions, workers, queues and runs')
    .addOption(new Option('--database-url <url>', 'Postgres holding the runs').env('DATABASE_URL'))
    .addOption(new Option('--region <name=redis-url>', 'a region and its Redis; repeat').env('KLEINSERVE_REGIONS').argParser(collect))
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: { databaseUrl?: string; region?: string[]; json?: boolean }) => {
      const { status } = await import('./status-command.ts');
      const argv = [...(opts.databaseUrl ? ['--database-url', opts.databaseUrl] : []), ...(opts.region ?? []).flatMap((r) => ['--region', r])];
      await status(opts.json ? [...argv, '--json'] : argv);
    });

  const keys = program.command('keys').description("list, add or revoke the server's generated API keys (in the data directory)")
    .addHelpText('after', `
A running server sees added and revoked keys within a second. Keys given by --api-key or KLEINSERVE_API_KEYS
replace this list entirely while they are set. Lost the generated key? \`keys add\`, then \`keys revoke\` the old id.`);
  const dataOption = () => new Option('--data <dir>', 'data directory of the server').env('KLEINSERVE_DATA').default('.data');
  keys.command('list').description('print the id of each key (key_ + 12 hex digits of its SHA-256; never the key)').addOption(dataOption())
    .action(async (opts: { data: string }) => {
      const { listKeys } = await import('./auth/keys.ts');
      for (const id of listKeys(path.resolve(opts.data))) console.log(id);
    });
  keys.command('add').description('create a key and print it once on stdout (only its hash is stored)').addOption(dataOption())
    .action(async (opts: { data: string }) => {
      const { addKey } = await import('./auth/keys.ts');
      const { key, id } = addKey(path.resolve(opts.data));
      process.stderr.write(`kleinserve: added ${id}; the key is shown only now:\n`);
      console.log(key);
    });
  keys.command('revoke').description('remove a key, given its id (from `keys list`) or the key itself').argument('<id>').addOption(dataOption())
    .action(async (id: string, opts: { data: string }) => {
      const { revokeKey } = await import('./auth/keys.ts');
      console.log(`revoked ${revokeKey(path.resolve(opts.data), id)}`);
    });

  program.commandsGroup('Client:');
  editCommand(program);

  program.commandsGroup('Tools:');
  program.command('make-tiny-model').description('build the tiny random-weight model that `--model tiny` uses, into DIR')
    .argument('<dir>', 'where to write it (created if missing)')
    .addOption(new Option('--python <path>', 'Python with kleinserve-engine installed').env('KLEINSERVE_PYTHON').default(undefined, "the checkout's .venv/bin/python, else python3"))
    .action(async (dir: string, opts: { python?: string }) => makeTinyModel(dir, opts.python ?? defaultPython()));
  program.helpCommand('help [command]', 'show help for a command');

  return program;
}

/** The singular KLEINSERVE_API_KEY is a client setting; a server started with only it would silently generate a key. */
function warnAboutClientKey(): void {
  if (process.env.KLEINSERVE_API_KEY && !process.env.KLEINSERVE_API_KEYS) {
    process.stderr.write(
      'kleinserve: note: KLEINSERVE_API_KEY (singular) is the key a CLIENT sends; the server reads its accepted keys from\n' +
        '  --api-key or KLEINSERVE_API_KEYS (plural). It is ignored here.\n',
    );
  }
}

/** Where `pip install` finds the engine: inside an installed package (shipped by pack-assets), else the checkout's engine/. */
function engineSource(): string {
  const packaged = fileURLToPath(new URL('../engine/', import.meta.url));
  return fs.existsSync(path.join(packaged, 'pyproject.toml')) ? packaged : fileURLToPath(new URL('../../engine/', import.meta.url));
}

/**
 * Fails before anything starts when the engine's Python cannot run it, naming the interpreter and the fix, instead of
 * a supervisor restarting an engine that can never start. Looks the module up without importing torch (fast).
 */
function checkEngineInstalled(python: string): void {
  const probe = spawnSync(python, ['-c', 'import importlib.util, sys; sys.exit(0 if sys.version_info >= (3, 10) and importlib.util.find_spec("kleinserve_engine") else 3)'], {
    stdio: 'ignore',
    timeout: 30_000,
  });
  const install = `install it with: ${python} -m pip install "${engineSource().replace(/\/$/, '')}" (torch first if you need a specific CUDA or CPU build)`;
  if (probe.error) {
    throw new Error(`cannot run the engine's Python "${python}" (${(probe.error as NodeJS.ErrnoException).code ?? probe.error.message}). ` +
      `Give a Python 3.11+ with --python or KLEINSERVE_PYTHON, then ${install}`);
  }
  if (probe.status !== 0) {
    throw new Error(`"${python}" has no kleinserve_engine module (or is older than Python 3.10); ${install}, or point --python / KLEINSERVE_PYTHON at a Python that has it`);
  }
}

/** Delegates to the engine, which owns the model layout: `python -m kleinserve_engine make-tiny-model DIR`. */
async function makeTinyModel(dirArg: string, python: string): Promise<void> {
  const dir = path.resolve(dirArg);
  fs.mkdirSync(dir, { recursive: true });
  const code = await new Promise<number>((resolve, reject) => {
    const child = spawn(python, ['-m', 'kleinserve_engine', 'make-tiny-model', dir], { stdio: 'inherit' });
    child.on('error', (err) => reject(new Error(`cannot run ${python} (${err.message}); give a Python with kleinserve-engine installed via --python or KLEINSERVE_PYTHON`)));
    child.on('exit', (c) => resolve(c ?? 1));
  });
  if (code !== 0) throw new Error(`the engine could not build the tiny model (${python} exited ${code})`);
}

/**
 * Commander turns a boolean option on whenever its environment variable is set, whatever the value; an operator
 * writing KLEINSERVE_DETERMINISTIC=0 means off, so false-looking values are removed before parsing.
 */
export function dropFalseBooleanEnv(cmd: Command, env: NodeJS.ProcessEnv = process.env): void {
  for (const option of cmd.options) {
    const value = option.envVar && option.isBoolean() ? env[option.envVar] : undefined;
    if (value !== undefined && /^(|0|false|no|off)$/i.test(value.trim())) delete env[option.envVar!];
  }
  for (const sub of cmd.commands) dropFalseBooleanEnv(sub, env);
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  dropFalseBooleanEnv(program);
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // Commander has printed the help, the version, or the message and usage hint; usage errors exit 64 (EX_USAGE).
      if (err.exitCode === 0) return;
      process.exit(64);
    }
    if (err instanceof UsageError) {
      console.error(`kleinserve: ${err.message}\n(run with --help for usage)`);
      process.exit(64);
    }
    console.error(`kleinserve: ${(err as Error).message}`);
    process.exit(1);
  }
}
