// The run -> fal's queue answers (submit, status), its result, and its webhook body.
import { outputUrl } from '../../http/outputs.ts';
import type { RunRecord } from '../../runs/types.ts';
import { falField } from './inputs.ts';

/** Status, result and cancel live under the app id (owner/alias), as fal's client builds them. */
export const APP_ID = 'fal-ai/flux-2';

export const requestUrls = (base: string, id: string) => {
  const root = `${base}/fal/queue/${APP_ID}/requests/${id}`;
  return { response_url: root, status_url: `${root}/status`, cancel_url: `${root}/cancel` };
};

export function queueStatus(run: RunRecord): 'IN_QUEUE' | 'IN_PROGRESS' | 'COMPLETED' {
  if (run.status === 'queued' || run.status === 'dispatching') return 'IN_QUEUE';
  return run.status === 'running' ? 'IN_PROGRESS' : 'COMPLETED';
}

const iso = (ms: number) => new Date(ms).toISOString();

/** What the run record tells of its progress, as fal log lines. */
export function logLines(run: RunRecord) {
  const line = (message: string, at: number, level = 'INFO') => ({ message, level, source: 'kleinserve', timestamp: iso(at) });
  const out = [line(`queued ${run.model_id}`, run.created_at)];
  if (run.started_at) out.push(line(`inference started (${run.input.steps} steps, ${run.input.num_images} image(s))`, run.started_at));
  if (run.completed_at) {
    out.push(run.status === 'failed' ? line(`failed: ${run.failure_code}: ${run.failure_message}`, run.completed_at, 'ERROR') : line(run.status, run.completed_at));
  }
  return out;
}

export function statusBody(run: RunRecord, base: string, opts: { logs: boolean; queuePosition?: number }) {
  const status = queueStatus(run);
  const metrics: Record<string, number> = {};
  if (run.started_at && run.completed_at) metrics.inference_time = (run.completed_at - run.started_at) / 1000;
  return {
    status,
    request_id: run.id,
    ...(status === 'IN_QUEUE' ? { queue_position: opts.queuePosition ?? 0 } : {}),
    ...requestUrls(base, run.id),
    logs: opts.logs ? logLines(run) : null,
    ...(status === 'COMPLETED' ? { metrics } : {}),
  };
}

/** fal's result; `bytes` (the outputs' encoded bytes) turns each URL into a data URI (sync_mode). */
export function resultBody(run: RunRecord, base: string, bytes?: Buffer[]) {
  const out = run.output!;
  return {
    images: out.images.map((img, i) => ({
      url: bytes ? `data:${img.content_type};base64,${bytes[i].toString('base64')}` : outputUrl(base, img.key),
      content_type: img.content_type,
      width: img.width,
      height: img.height,
    })),
    seed: out.seed,
    timings: Object.fromEntries(
      Object.entries({ inference: out.timing.engine_total_ms, total: out.timing.total_ms }).flatMap(([k, ms]) => (typeof ms === 'number' ? [[k, ms / 1000]] : [])),
    ),
    has_nsfw_concepts: out.images.map((img) => img.nsfw === true),
    prompt: run.input.prompt,
  };
}

/** A run that ended without output, as fal reports it: what failed, naming the field for input errors. */
export function failureDetail(run: RunRecord): { status: number; body: Record<string, unknown> } {
  if (run.status === 'canceled') {
    return { status: 400, body: { detail: `request ${run.id} was cancelled`, code: 'RUN_CANCELED', message: `request ${run.id} was cancelled`, errors: [] } };
  }
  const code = run.failure_code ?? 'INTERNAL';
  const message = run.failure_message ?? 'run failed';
  const m = /^(input\.[\w.[\]]+):\s*(.*)$/s.exec(message);
  if (m && (code === 'IMAGE_FETCH_FAILED' || code === 'INPUT_VALIDATION_FAILED')) {
    const field = falField(m[1]);
    const loc = ['body', ...field.split(/[.[\]]+/).filter(Boolean).map((s) => (/^\d+$/.test(s) ? Number(s) : s))];
    return { status: 422, body: { detail: [{ loc, msg: m[2], type: 'value_error' }], code, message: `${field}: ${m[2]}`, errors: [{ field, reason: m[2] }] } };
  }
  return { status: code === 'INPUT_VALIDATION_FAILED' || code === 'IMAGE_FETCH_FAILED' ? 422 : 500, body: { detail: `${code}: ${message}`, code, message, errors: [] } };
}

/** The body fal POSTs to fal_webhook when a request ends. */
export function falWebhookBody(run: RunRecord, base: string): { event: string; body: string } {
  const ok = run.status === 'succeeded';
  const failure = ok ? null : failureDetail(run).body;
  return {
    event: ok ? 'OK' : 'ERROR',
    body: JSON.stringify({
      request_id: run.id,
      gateway_request_id: run.id,
      status: ok ? 'OK' : 'ERROR',
      payload: ok ? resultBody(run, base) : { detail: failure!.detail },
      ...(ok ? {} : { error: failure!.message }),
    }),
  };
}
