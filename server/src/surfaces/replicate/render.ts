// The run -> Replicate's prediction object (and its webhook body).
import { outputUrl } from '../../http/outputs.ts';
import { inputUrl } from '../../runs/references.ts';
import type { RunRecord } from '../../runs/types.ts';
import { MODEL, VERSION } from './schemas.ts';

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function predictionStatus(run: RunRecord) {
  if (run.status === 'queued' || run.status === 'dispatching') return 'starting' as const;
  return run.status === 'running' ? ('processing' as const) : run.status;
}

function logs(run: RunRecord): string {
  const lines: string[] = [];
  if (run.started_at) lines.push(`Running ${run.input.steps} steps at ${run.input.width ? `${run.input.width}x${run.input.height}` : 'the first image size'}`);
  if (run.status === 'succeeded' && run.output) lines.push(`Generated ${run.output.images.length} image(s), seed ${run.output.seed}`);
  if (run.status === 'failed') lines.push(`${run.failure_code}: ${run.failure_message}`);
  return lines.join('\n');
}

export function toPrediction(run: RunRecord, base: string) {
  const { input } = run;
  const self = `${base}/v1/predictions/${run.id}`;
  const metrics: Record<string, number> = {};
  if (run.started_at && run.completed_at) metrics.predict_time = (run.completed_at - run.started_at) / 1000;
  if (run.completed_at) metrics.total_time = (run.completed_at - run.created_at) / 1000;
  return {
    id: run.id,
    model: MODEL,
    version: VERSION,
    input: {
      prompt: input.prompt,
      ...(input.images.length ? { images: input.images.map((img, i) => (img.kind === 'url' ? img.url : inputUrl(base, run, i))) } : {}),
      seed: input.seed,
      output_format: input.output_format === 'jpeg' ? 'jpg' : input.output_format,
      output_quality: input.output_quality,
      ...(input.width !== null ? { width: input.width, height: input.height } : {}),
      ...(input.deterministic ? { deterministic: true } : {}),
    },
    logs: logs(run),
    output: run.status === 'succeeded' && run.output ? run.output.images.map((img) => outputUrl(base, img.key)) : null,
    data_removed: false,
    error: run.status === 'failed' ? `${run.failure_code}: ${run.failure_message}` : null,
    status: predictionStatus(run),
    source: 'api' as const,
    created_at: iso(run.created_at)!,
    started_at: iso(run.started_at),
    completed_at: iso(run.completed_at),
    urls: { get: self, cancel: `${self}/cancel`, stream: `${self}/stream/${run.output_token}`, web: `${base}/v1/runs/${run.id}` },
    metrics,
  };
}

export function replicateWebhookBody(run: RunRecord, base: string): { event: string; body: string } {
  const p = toPrediction(run, base);
  return { event: p.status, body: JSON.stringify({ ...p, webhook: run.callback_url }) };
}
