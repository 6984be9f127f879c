// The service's run -> Runflow's run object and callback envelope. Inline images are summarised, never
// echoed back as megabytes.
import { outputUrl } from '../../http/outputs.ts';
import { failureField } from '../../runs/failure.ts';
import { inputUrl } from '../../runs/references.ts';
import type { RunRecord } from '../../runs/types.ts';

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());



/** `cost`: what the run cost the operator (runs/cost.ts); 0 unless a price per GPU-hour is configured. */
export function toRunObject(run: RunRecord, baseUrl: string, cost = 0) {
  const { input } = run;
  const failed = run.status === 'failed';
  return {
    id: run.id,
    status_code: run.status,
    model_id: run.model_id,
    input: {
      prompt: input.prompt,
      // Inline images read back as their stored copy's unguessable URL, which can be submitted again.
      image_urls: input.images.map((img, i) => (img.kind === 'url' ? img.url : inputUrl(baseUrl, run, i))),
      seed: input.seed,
      steps: input.steps,
      output_format: input.output_format,
      output_quality: input.output_quality,
      ...(input.width !== null ? { width: input.width, height: input.height } : {}),
      ...(input.guidance_scale !== undefined ? { guidance_scale: input.guidance_scale } : {}),
      ...(input.negative_prompt ? { negative_prompt: input.negative_prompt } : {}),
      ...(input.safety_checker !== undefined ? { enable_safety_checker: input.safety_checker } : {}),
      ...(input.loras ? { loras: input.loras } : {}),
      ...(input.deterministic ? { deterministic: true } : {}),
    },
    output: run.output && {
      outputs: run.output.images.map((img) => ({
        url: outputUrl(baseUrl, img.key),
        type: 'image' as const,
        content_type: img.content_type,
        width: img.width,
        height: img.height,
      })),
      seed: run.output.seed,
      timing: run.output.timing as Record<string, number>,
      nsfw_detected: run.output.images.some((img) => img.nsfw === true),
    },
    metadata: run.metadata,
    client_ref: run.client_ref,
    callback_url: run.callback_url,
    created_at: iso(run.created_at)!,
    started_at: iso(run.started_at),
    completed_at: iso(run.completed_at),
    duration_ms: run.completed_at !== null && run.started_at !== null ? run.completed_at - run.started_at : null,
    cost,
    failure_code: failed ? run.failure_code : null,
    failure_message: failed ? run.failure_message : null,
    failure_stage_code: failed ? run.failure_stage_code : null,
    error: failed ? { code: run.failure_code ?? 'INTERNAL', message: run.failure_message ?? 'run failed', ...failureField(run) } : null,
    links: {
      self: `${baseUrl}/v1/runs/${run.id}`,
      cancel: `${baseUrl}/v1/admin/runs/${run.id}/cancellation`,
    },
  };
}

export type RunObject = ReturnType<typeof toRunObject>;

const EVENTS = { succeeded: 'run.completed', failed: 'run.failed', canceled: 'run.cancelled' } as const;

/** The callback envelope of the contract, serialised once so every retry sends (and signs) the same bytes. */
export function callbackEnvelope(run: RunRecord, baseUrl: string): { event: string; body: string } {
  const obj = toRunObject(run, baseUrl);
  // The contract's error envelope is {code, message} (the message names the field); the run object adds field/reason.
  const envelopeError = obj.error && { code: obj.error.code, message: obj.error.message };
  const event = EVENTS[run.status as keyof typeof EVENTS] ?? `run.${run.status}`;
  const body = JSON.stringify({
    event,
    run_id: run.id,
    status: run.status,
    // Runflow's run.failed callbacks carry the error envelope where a completed run's outputs would be.
    output: run.status === 'failed' ? { error: envelopeError } : obj.output,
    error: envelopeError,
    duration_ms: obj.duration_ms,
    created_at: obj.created_at,
    completed_at: obj.completed_at,
    metadata: run.metadata,
    client_ref: run.client_ref,
  });
  return { event, body };
}
