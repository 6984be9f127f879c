// `kleinserve edit`: one edit against a running server, with progress and the run's timings.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

const MIME: Record<string, string> = {
  '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp',
  '.gif': 'image/gif', '.avif': 'image/avif', '.tif': 'image/tiff', '.tiff': 'image/tiff',
};
const FORMAT: Record<string, string> = { '.jpg': 'jpeg', '.jpeg': 'jpeg', '.png': 'png', '.webp': 'webp' };

function imageArg(value: string): string {
  if (/^https?:\/\//i.test(value)) return value;
  const bytes = fs.readFileSync(value);
  return `data:${MIME[path.extname(value).toLowerCase()] ?? 'image/jpeg'};base64,${bytes.toString('base64')}`;
}

export async function edit(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      image: { type: 'string', multiple: true },
      prompt: { type: 'string' },
      seed: { type: 'string' },
      steps: { type: 'string' },
      output: { type: 'string', short: 'o' },
      server: { type: 'string' },
      'api-key': { type: 'string' },
    },
  });
  if (!values.image?.length || !values.prompt || !values.output) {
    throw new Error('edit needs --image, --prompt and -o');
  }
  const server = (values.server ?? process.env.KLEINSERVE_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  const key = values['api-key'] ?? process.env.KLEINSERVE_API_KEY;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  const input: Record<string, unknown> = { prompt: values.prompt, image_urls: values.image.map(imageArg) };
  if (values.seed !== undefined) input.seed = Number(values.seed);
  if (values.steps !== undefined) input.steps = Number(values.steps);
  const fmt = FORMAT[path.extname(values.output).toLowerCase()];
  if (fmt) input.output_format = fmt;

  const t0 = performance.now();
  let run = await call(`${server}/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ input }),
  });
  process.stderr.write(`run ${run.id}: ${run.status_code}`);
  let last = run.status_code;
  while (!['succeeded', 'failed', 'canceled'].includes(run.status_code)) {
    await new Promise((r) => setTimeout(r, 100));
    run = await call(`${server}/v1/runs/${run.id}`, { headers });
    if (run.status_code !== last) {
      process.stderr.write(` -> ${run.status_code}`);
      last = run.status_code;
    }
  }
  process.stderr.write('\n');
  if (run.status_code !== 'succeeded') {
    throw new Error(`run ${run.status_code}: ${run.error?.code ?? ''} ${run.error?.message ?? ''}`.trim());
  }
  const out = run.output.outputs[0];
  const res = await fetch(out.url);
  if (!res.ok) throw new Error(`downloading ${out.url}: HTTP ${res.status}`);
  fs.writeFileSync(values.output, Buffer.from(await res.arrayBuffer()));
  const wall = Math.round(performance.now() - t0);
  console.log(`wrote ${values.output} (${out.width}x${out.height} ${out.content_type}, seed ${run.output.seed}) in ${wall} ms`);
  const timing = run.output.timing as Record<string, number>;
  console.log(Object.entries(timing).map(([k, v]) => `  ${k.padEnd(16)} ${v}`).join('\n'));
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function call(url: string, init: RequestInit): Promise<any> {
  const res = await fetch(url, init);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const detail = body.errors?.length ? body.errors.map((e: { field: string; reason: string }) => `\n  ${e.field}: ${e.reason}`).join('') : '';
    throw new Error(`HTTP ${res.status} ${body.code ?? ''}: ${body.message ?? ''}${detail}`);
  }
  return body;
}
