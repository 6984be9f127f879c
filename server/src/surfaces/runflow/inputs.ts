// Runflow's body -> the canonical run request: defaults applied, size sources and fal/Replicate-style fields
// resolved (input-aliases.ts is the single place for their precedence).
import { INPUT_LIMITS } from '../../runs/limits.ts';
import type { RunRequest } from '../../runs/inputs.ts';
import { resolveAliases } from './input-aliases.ts';
import type { CreateRunBody, TextToImageBody } from './schemas.ts';

type AnyInput = CreateRunBody['input'] | TextToImageBody['input'];

function safetyChecker(input: { enable_safety_checker?: boolean; disable_safety_checker?: boolean }): { safety_checker?: boolean } {
  if (input.enable_safety_checker !== undefined) return { safety_checker: input.enable_safety_checker };
  if (input.disable_safety_checker !== undefined) return { safety_checker: !input.disable_safety_checker };
  return {};
}

export function toRunRequest(modelId: string, body: CreateRunBody | TextToImageBody): RunRequest {
  const input: AnyInput = body.input;
  const a = resolveAliases(input);
  return {
    model_id: modelId,
    input: {
      prompt: input.prompt,
      images: 'image_urls' in input ? input.image_urls : [],
      seed: input.seed,
      steps: a.steps,
      output_format: input.output_format ?? 'jpeg',
      output_quality: input.output_quality ?? INPUT_LIMITS.defaultOutputQuality,
      width: a.width,
      height: a.height,
      num_images: a.num_images,
      ...(input.guidance_scale !== undefined ? { guidance_scale: input.guidance_scale } : {}),
      ...(input.negative_prompt ? { negative_prompt: input.negative_prompt } : {}),
      ...safetyChecker(input),
      ...(input.loras?.length ? { loras: input.loras } : {}),
      ...(input.deterministic ? { deterministic: true } : {}),
    },
    callback_url: body.callback_url ?? null,
    metadata: body.metadata ?? null,
    client_ref: body.client_ref ?? null,
  };
}
