// fal's input -> the canonical run request. fal's defaults: the edit's size follows its first image, text-to-image
// is landscape_4_3; png output.
import { MODEL_TEXT_TO_IMAGE, type RunRequest } from '../../runs/inputs.ts';
import { INPUT_LIMITS } from '../../runs/limits.ts';
import { IMAGE_SIZE_PRESETS } from '../../runs/sizes.ts';
import type { FalInput } from './schemas.ts';

/** Recorded in the run's metadata so the queue's result route knows to answer data URIs. */
export const SYNC_MODE_METADATA = 'fal_sync_mode';

/** `userId`: whom fal's webhook signature names (the caller's key id). */
export function toRunRequest(modelId: string, input: FalInput, webhook: string | null, userId: string): RunRequest {
  const size =
    typeof input.image_size === 'string'
      ? IMAGE_SIZE_PRESETS[input.image_size]
      : (input.image_size ?? (modelId === MODEL_TEXT_TO_IMAGE ? IMAGE_SIZE_PRESETS.landscape_4_3 : null));
  return {
    model_id: modelId,
    input: {
      prompt: input.prompt,
      images: 'image_urls' in input ? input.image_urls : [],
      seed: input.seed,
      steps: input.num_inference_steps,
      output_format: input.output_format ?? 'png',
      output_quality: INPUT_LIMITS.defaultOutputQuality,
      width: size?.width ?? null,
      height: size?.height ?? null,
      num_images: input.num_images ?? 1,
      ...(input.enable_safety_checker !== undefined ? { safety_checker: input.enable_safety_checker } : {}),
      ...(input.guidance_scale !== undefined ? { guidance_scale: input.guidance_scale } : {}),
      ...(input.loras?.length ? { loras: input.loras } : {}),
      ...(input.deterministic ? { deterministic: true } : {}),
    },
    callback_url: webhook,
    ...(webhook ? { callback: { format: 'fal', signing: { scheme: 'fal' as const, userId } } } : {}),
    metadata: input.sync_mode ? { [SYNC_MODE_METADATA]: true } : null,
    client_ref: null,
  };
}

/** Canonical field names (intake's) -> fal's. */
export function falField(field: string): string {
  return field
    .replace(/^input\.steps$/, 'num_inference_steps')
    .replace(/^callback_url$/, 'fal_webhook')
    .replace(/^input\./, '');
}
