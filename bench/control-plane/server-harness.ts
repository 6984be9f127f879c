// What the control-plane benchmarks share: a photo-like input, the real server on the tiny model (or a given
// one), and the machine line their reports carry.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import sharp from 'sharp';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const KEY = 'bench_key';
const python = process.env.KLEINSERVE_PYTHON || path.join(ROOT, '.venv/bin/python');

/** A size x size JPEG of smooth gradients plus noise: compresses like a photo (~50-100 kB at 512), not like a flat test card. */
export async function photo(size: number): Promise<Buffer> {
  const raw = Buffer.alloc(size * size * 3);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const i = (y * size + x) * 3, n = (Math.random() - 0.5) * 40;
      raw[i] = Math.max(0, Math.min(255, (x / size) * 255 + n));
      raw[i + 1] = Math.max(0, Math.min(255, (y / size) * 255 + n));
      raw[i + 2] = Math.max(0, Math.min(255, 128 + 100 * Math.sin(x / 30) + n));
    }
  return sharp(raw, { raw: { width: size, height: size, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
}

/**
 * Starts `kleinserve serve` on a free port with its data under `tmp`, on `model` or else a tiny random-weight
 * model made under `tmp`, and resolves once /v1/health says ok.
 */
export async function startServer(opts: { tmp: string; model?: string; args?: string[]; env: NodeJS.ProcessEnv }): Promise<{ server: ChildProcess; url: string }> {
  let model = opts.model;
  if (!model) {
    model = path.join(opts.tmp, 'tiny');
    const r = spawnSync(python, ['-m', 'kleinserve_engine', 'make-tiny-model', model], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error('make-tiny-model failed');
  }
  const server = spawn(
    process.execPath,
    [path.join(ROOT, 'server/bin/kleinserve.mjs'), 'serve', '--model', model, '--port', '0', '--data', path.join(opts.tmp, 'data'), '--api-key', KEY, ...(opts.args ?? [])],
    { env: opts.env, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const url: string = await new Promise((resolve) => {
    readline.createInterface({ input: server.stdout! }).on('line', (l) => {
      const m = JSON.parse(l);
      if (m.event === 'listening') resolve(m.url);
    });
  });
  for (;;) {
    const h = await fetch(`${url}/v1/health`).then((r) => r.json()).catch(() => ({}));
    if (h.ok) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return { server, url };
}

/** CPU, cores, memory, OS and Node: the line every report names its machine with. */
export function machine(): string {
  const cpu = os.cpus();
  return `${cpu[0]?.model ?? 'unknown CPU'}, ${cpu.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, ${os.type()} ${os.release()}, Node ${process.version}`;
}
