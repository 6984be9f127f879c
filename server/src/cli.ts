// `kleinserve serve | make-tiny-model | edit`. Cluster roles (`api`, `worker`) are added here by issue 5.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig, REPO_ROOT } from './config.ts';
import { editCommand as edit } from './cli-edit/command.ts';

const USAGE = `usage:
  kleinserve serve [--model DIR|REPO|tiny] [--port 8080] [--host 127.0.0.1] [--data DIR] [--api-key K]... [--concurrency N]
  kleinserve api --database-url URL --region NAME=REDIS_URL [--region ...] --storage file:DIR|s3://BUCKET [--port N] [--host H]
                [--data DIR] [--api-key K]... [--queue-limit N] [--backpressure reject|queue]
  kleinserve worker --database-url URL --region NAME --redis REDIS_URL --storage file:DIR|s3://BUCKET [--model DIR|REPO|tiny]
                [--concurrency N] [--data DIR]
  kleinserve status --database-url URL --region NAME=REDIS_URL [--region ...] [--json]
  kleinserve make-tiny-model DIR
  kleinserve edit --image FILE|URL [--image ...] --prompt TEXT [--seed N] [--steps N] -o out.jpg [--server URL]... [--api-key K]
  kleinserve edit --prompt TEXT [--ref FILE|URL]... FILE|DIR|GLOB... [--suffix .edited] [--format jpeg|png|webp] [--concurrency 2]`;

export async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'serve':
        return await serveCommand(rest);
      case 'api':
      case 'worker':
        return await clusterCommand(command, rest);
      case 'status': {
        const { status } = await import('./status-command.ts');
        return await status(rest);
      }
      case 'make-tiny-model':
        return await makeTinyModel(rest);
      case 'edit':
        return await edit(rest);
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        console.log(USAGE);
        return;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`kleinserve: ${(err as Error).message}\n${USAGE}`);
      process.exit(64);
    }
    console.error(`kleinserve: ${(err as Error).message}`);
    process.exit(1);
  }
}

export class UsageError extends Error {}

/** Flags every role that runs an engine or serves the API shares. */
const ROLE_OPTIONS = {
  model: { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
  data: { type: 'string' },
  'api-key': { type: 'string', multiple: true },
  concurrency: { type: 'string' },
} as const;

async function serveCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: ROLE_OPTIONS,
  });
  const cfg = loadConfig(values);
  const { serve } = await import('./serve.ts');
  await serve(cfg);
}

/** Cluster roles (issue 5); the role modules load lazily so `serve` never pulls in pg/BullMQ/S3. */
async function clusterCommand(command: 'api' | 'worker', args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      ...ROLE_OPTIONS,
      'database-url': { type: 'string' },
      region: { type: 'string', multiple: true },
      redis: { type: 'string' },
      storage: { type: 'string' },
      'queue-limit': { type: 'string' },
      backpressure: { type: 'string' },
    },
  });
  const cfg = loadConfig(values);
  const { loadClusterConfig, apiRegions, workerRegion } = await import('./roles/cluster-config.ts');
  const cluster = loadClusterConfig(values);
  if (command === 'api') {
    const { runApi } = await import('./roles/api.ts');
    return runApi(cfg, cluster, apiRegions(values));
  }
  const { runWorker } = await import('./roles/worker.ts');
  return runWorker(cfg, cluster, workerRegion(values));
}

/** Delegates to the engine, which owns the model layout: `python -m kleinserve_engine make-tiny-model DIR`. */
async function makeTinyModel(args: string[]): Promise<void> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  if (positionals.length !== 1) throw new UsageError('make-tiny-model takes exactly one DIR');
  const dir = path.resolve(positionals[0]);
  fs.mkdirSync(dir, { recursive: true });
  const python = process.env.KLEINSERVE_PYTHON || path.join(REPO_ROOT, '.venv/bin/python');
  const code = await new Promise<number>((resolve, reject) => {
    const child = spawn(python, ['-m', 'kleinserve_engine', 'make-tiny-model', dir], { stdio: 'inherit' });
    child.on('error', reject);
    child.on('exit', (c) => resolve(c ?? 1));
  });
  if (code !== 0) throw new Error(`the engine could not build the tiny model (exit ${code})`);
}
