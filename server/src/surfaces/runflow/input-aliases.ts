// fal- and Replicate-style input fields accepted inside Runflow's body, resolved to the canonical edit
// parameters in ONE place. Precedence when several are given (documented in docs/surfaces.md):
//   steps                > num_inference_steps                        (Runflow's own field wins)
//   width/height         > image_size (preset or {width,height})      > aspect_ratio (+ output_megapixels)
//                        > default: the first reference's size (edit) or 1024x1024 (text-to-image)
//   num_images           one run with several outputs (the engine batches them; seeds seed, seed+1, ...)
//   sync_mode: true      the run answer waits for the end and carries each output as a data URI
import { z } from 'zod';
import { INPUT_LIMITS, inputFields } from '../../runs/limits.ts';
import { IMAGE_SIZE_PRESETS, sizeForAspect, type ImageSizePreset } from '../../runs/sizes.ts';

const PRESET_NAMES = Object.keys(IMAGE_SIZE_PRESETS) as [ImageSizePreset, ...ImageSizePreset[]];

/** Extra fields of the edit input; spread into the input schema so unknown-field checks still apply. */
export const ALIAS_FIELDS = {
  num_inference_steps: inputFields.steps().optional().describe('fal alias of steps; steps wins when both are given'),
  num_images: inputFields.outputs().optional().describe(`outputs of this one run (1-${INPUT_LIMITS.maxOutputs}), batched by the engine`),
  aspect_ratio: z
    .string()
    // Sides 1-99: a zero side has no size (property tests found "0:0" passing here and failing as a 500).
    .regex(/^(match_input_image|[1-9]\d?:[1-9]\d?)$/, 'use match_input_image or W:H (sides 1-99) such as 16:9')
    .optional()
    .describe('Replicate style; ignored when width/height or image_size is given'),
  output_megapixels: z
    .union([z.number().min(0.0625).max(4), z.string().regex(/^\d+(\.\d+)?$/)])
    .transform(Number)
    .pipe(z.number().min(0.0625).max(4))
    .optional()
    .describe('with aspect_ratio: output area in megapixels (default 1)'),
  sync_mode: z.boolean().optional().describe('answer only when done, with outputs as data URIs'),
  // Whether outputs are checked is the operator's setting (--safety-checker); a request may only turn an
  // active checker off, and only where the operator allows it (--allow-safety-opt-out), else a 422.
  enable_safety_checker: z.boolean().optional().describe('false: skip the operator\'s safety checker for this run (422 unless the server allows opting out)'),
  disable_safety_checker: z.boolean().optional().describe('Replicate\'s inverse of enable_safety_checker'),
  // Honoured by base checkpoints; a distilled checkpoint (klein 4B/9B) refuses anything but 1 with a 422.
  guidance_scale: inputFields
    .guidanceScale()
    .optional()
    .describe('classifier-free guidance (base checkpoints: 1-20, default 4); distilled checkpoints take none: a value other than 1 is a 422'),
  negative_prompt: inputFields.negativePrompt().optional().describe('base checkpoints with guidance_scale above 1; refused (422) elsewhere'),
  loras: inputFields.loras().optional().describe(`up to ${INPUT_LIMITS.maxLoras} LoRA adapters applied to this run only`),
};

/** image_size accepts a fal preset name as well as {width, height}. */
export const ImageSizeSchema = z.union([
  z.enum(PRESET_NAMES),
  z.strictObject({ width: inputFields.side(), height: inputFields.side() }),
]);

export interface AliasInput {
  steps?: number;
  num_inference_steps?: number;
  num_images?: number;
  width?: number;
  height?: number;
  image_size?: ImageSizePreset | { width: number; height: number };
  aspect_ratio?: string;
  output_megapixels?: number;
  sync_mode?: boolean;
}

export interface ResolvedAliases {
  steps: number | undefined;
  num_images: number;
  width: number | null;
  height: number | null;
  sync_mode: boolean;
}

export function resolveAliases(input: AliasInput): ResolvedAliases {
  let size: { width: number; height: number } | null = null;
  if (input.width !== undefined && input.height !== undefined) size = { width: input.width, height: input.height };
  else if (typeof input.image_size === 'string') size = { ...IMAGE_SIZE_PRESETS[input.image_size] };
  else if (input.image_size) size = { ...input.image_size };
  else if (input.aspect_ratio && input.aspect_ratio !== 'match_input_image') {
    size = sizeForAspect(input.aspect_ratio, input.output_megapixels ?? 1);
  }
  // match_input_image: leave the size to the engine, which follows the first reference (capped at its ref pixel limit).
  return {
    // Absent: the loaded checkpoint's default (runs/model-facts.ts).
    steps: input.steps ?? input.num_inference_steps,
    num_images: input.num_images ?? 1,
    width: size?.width ?? null,
    height: size?.height ?? null,
    sync_mode: input.sync_mode ?? false,
  };
}
