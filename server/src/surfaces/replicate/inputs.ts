// Replicate's prediction body -> the canonical run request, with the model's defaults (1:1 at 1 megapixel, jpg,
// quality 95), and its webhook filter -> the statuses whose entry sends a webhook.
import { MODEL_EDIT, MODEL_TEXT_TO_IMAGE, type RunRequest } from '../../runs/inputs.ts';
import { INPUT_LIMITS } from '../../runs/limits.ts';
import { sizeForAspect } from '../../runs/sizes.ts';
import type { RunStatus } from '../../runs/types.ts';
import type { PredictionBody, WebhookEvent } from './schemas.ts';

/**
 * start: the run starts processing; logs: its log grows (when it starts and when it ends); output: its output
 * appears (on success); completed: it ends however it ends. One webhook per status change, however many match.
 */
const EVENT_STATUSES: Record<WebhookEvent, RunStatus[]> = {
  start: ['running'],
  logs: ['running', 'succeeded', 'failed', 'canceled'],
  output: ['succeeded'],
  completed: ['succeeded', 'failed', 'canceled'],
};
export const DEFAULT_EVENTS: WebhookEvent[] = ['output', 'completed'];

export function webhookStatuses(events: WebhookEvent[]): RunStatus[] {
  return [...new Set(events.flatMap((e) => EVENT_STATUSES[e]))];
}

export function toRunRequest(body: PredictionBody): RunRequest {
  const { input } = body;
  const images = input.images ?? [];
  const ratio = input.aspect_ratio ?? '1:1';
  const size = ratio === 'match_input_image' ? null : sizeForAspect(ratio, input.output_megapixels ?? 1);
  return {
    model_id: images.length ? MODEL_EDIT : MODEL_TEXT_TO_IMAGE,
    input: {
      prompt: input.prompt,
      images,
      seed: input.seed,
      output_format: input.output_format === 'jpg' || !input.output_format ? 'jpeg' : input.output_format,
      output_quality: Math.max(1, input.output_quality ?? INPUT_LIMITS.defaultOutputQuality),
      width: size?.width ?? null,
      height: size?.height ?? null,
      num_images: 1,
      ...(input.disable_safety_checker !== undefined ? { safety_checker: !input.disable_safety_checker } : {}),
      ...(input.loras?.length ? { loras: input.loras } : {}),
      ...(input.deterministic ? { deterministic: true } : {}),
    },
    callback_url: body.webhook ?? null,
    ...(body.webhook
      ? { callback: { format: 'replicate', on: webhookStatuses(body.webhook_events_filter ?? DEFAULT_EVENTS), signing: { scheme: 'standard-webhooks' as const } } }
      : {}),
    metadata: null,
    client_ref: null,
  };
}

/** Canonical field names (intake's) -> Replicate's. */
export function replicateField(field: string): string {
  return field.replace(/^input\.image_urls/, 'input.images').replace(/^callback_url$/, 'webhook');
}
