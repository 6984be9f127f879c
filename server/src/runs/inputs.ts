// The canonical run inputs every surface translates its wire format into. Defaults are applied and aliases
// resolved by then; image sources are as the caller gave them (URL, data: URI, raw base64, or asset:<id>).
import type { CallbackSpec } from './types.ts';

/** The model ids runs carry: FLUX.2 [klein] 4B's edit and text-to-image modes. */
export const MODEL_EDIT = 'black-forest-labs/flux-2-klein-4b/edit';
export const MODEL_TEXT_TO_IMAGE = 'black-forest-labs/flux-2-klein-4b';

export type OutputFormat = 'jpeg' | 'png' | 'webp';

/** A LoRA adapter as the caller names it; the control plane resolves `path` to a file (adapters/resolver.ts). */
export interface LoraInput {
  path: string;
  scale: number;
}

export interface GenerateInput {
  prompt: string;
  /** Random when absent; the run reports the seed it used. */
  seed?: number;
  /** Absent: the loaded checkpoint's default (4 distilled, 50 base; runs/model-facts.ts). */
  steps?: number;
  output_format: OutputFormat;
  output_quality: number;
  /** Null: the engine decides (the first reference's size for edits, 1024x1024 without references). */
  width: number | null;
  height: number | null;
  num_images: number;
  /** Classifier-free guidance: honoured by a base checkpoint, refused (422) by a distilled one unless 1. */
  guidance_scale?: number;
  /** Base checkpoints with guidance above 1 only; refused elsewhere rather than dropped. */
  negative_prompt?: string;
  /** false: skip the operator's safety checker for this run (refused unless the operator allows opting out). */
  safety_checker?: boolean;
  /** Up to INPUT_LIMITS.maxLoras adapters, applied to this run only. */
  loras?: LoraInput[];
  /** true: the engine runs it alone and encodes its prompt alone, so the same input and seed give the same bytes. */
  deterministic?: boolean;
}

export interface EditInput extends GenerateInput {
  images: string[];
}

/** One request to create a run, whatever surface it came through. */
export interface RunRequest {
  model_id: string;
  /** Text-to-image runs have no images. */
  input: EditInput;
  callback_url: string | null;
  metadata: Record<string, unknown> | null;
  client_ref: string | null;
  /** The surface's callback contract, when it is not the default one. */
  callback?: CallbackSpec;
}
