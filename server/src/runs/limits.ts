// The one place input bounds live. Static bounds (what a request may ask for at all) come from the engine's
// default limits, so the wire schemas and the engine agree; the engine's runtime report (`limits()` in the
// intake) can only tighten them (a smaller max_steps, a smaller reference size).
import { z } from 'zod';
import { DEFAULT_ENGINE_LIMITS, type EngineLimits } from '../engine/limits.ts';

export type { EngineLimits };

export const INPUT_LIMITS = {
  maxImages: DEFAULT_ENGINE_LIMITS.max_images,
  /** Base checkpoints take up to 100; the loaded checkpoint's own max_steps narrows it at intake. */
  maxSteps: 100,
  /** Until the engine reports its checkpoint's default (runs/model-facts.ts). */
  defaultSteps: 4,
  /** Outputs of one run, batched by the engine. */
  maxOutputs: DEFAULT_ENGINE_LIMITS.max_batch,
  maxOutputPixels: DEFAULT_ENGINE_LIMITS.max_output_pixels,
  minSide: DEFAULT_ENGINE_LIMITS.min_side,
  maxSide: 4096,
  /** Output sides are multiples of this (the VAE's and the patchifier's stride). */
  sideMultiple: 16,
  maxPromptChars: 20_000,
  defaultOutputQuality: 95,
  /** LoRA adapters per run (as fal's LoRA endpoints) and the scale each may take (the engine's bounds). */
  maxLoras: 3,
  minLoraScale: -4,
  maxLoraScale: 4,
  maxLoraPathChars: 2048,
  /** Classifier-free guidance a request may name at all; the loaded checkpoint narrows it (runs/model-facts.ts). */
  minGuidance: 0,
  maxGuidance: 20,
} as const;

const L = INPUT_LIMITS;

/** Field schemas the surfaces build their wire schemas from, so each bound is written once. */
export const inputFields = {
  prompt: () => z.string().trim().min(1, 'must not be empty').max(L.maxPromptChars),
  steps: () => z.int().min(1).max(L.maxSteps),
  outputs: () => z.int().min(1).max(L.maxOutputs),
  side: () => z.int().min(L.minSide).max(L.maxSide).multipleOf(L.sideMultiple),
  seed: () => z.int().min(0).max(Number.MAX_SAFE_INTEGER),
  outputFormat: () => z.enum(['jpeg', 'png', 'webp']),
  outputQuality: () => z.int().min(1).max(100),
  loras: () =>
    z
      .array(
        z.strictObject({
          path: z
            .string()
            .min(1)
            .max(L.maxLoraPathChars)
            .describe('Hugging Face repo id (owner/name or owner/name:file.safetensors), http(s) URL of a .safetensors file, or a file name in the server\'s adapters directory'),
          scale: z.number().min(L.minLoraScale).max(L.maxLoraScale).default(1).describe(`strength, ${L.minLoraScale} to ${L.maxLoraScale}, default 1`),
        }),
      )
      .max(L.maxLoras, `takes at most ${L.maxLoras} LoRAs`),
  guidanceScale: () => z.number().min(L.minGuidance).max(L.maxGuidance),
  negativePrompt: () => z.string().max(L.maxPromptChars),
  /** Run alone (never batched) with the prompt encoded alone: byte-identical output for the same input and seed. */
  deterministic: () =>
    z
      .boolean()
      .describe('true: byte-identical output for the same input and seed whatever else is queued (the run is never batched; slower under load). Default: batched, within 1/255 per channel of the same run alone'),
};

/** Why a W x H output size is refused, or null when it is fine. */
export function sideProblem(width: number, height: number): string | null {
  const bad = [width, height].some((d) => d % L.sideMultiple !== 0 || d < L.minSide || d > L.maxSide);
  return bad ? `both sides must be multiples of ${L.sideMultiple} between ${L.minSide} and ${L.maxSide}` : null;
}
