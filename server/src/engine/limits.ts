// What the engine accepts, as it reports it in every health answer. Until it has answered, these defaults
// (the engine's own) stand in; runs/limits.ts derives the service's static input bounds from the same values.
export interface EngineLimits {
  max_ref_pixels: number;
  min_side: number;
  max_aspect: number;
  max_images: number;
  max_steps: number;
  max_output_pixels: number;
  max_batch: number;
  /** The engine runs every request alone with torch's deterministic algorithms (`--deterministic`); max_batch is then 1. */
  deterministic?: boolean;
  /** LoRA bounds, once the engine reports them. */
  max_loras?: number;
  max_lora_rank?: number;
}

/** The loaded checkpoint's facts, from the engine's health (`model_info`); null until it has loaded. */
export interface ModelFacts {
  id: string;
  is_distilled: boolean;
  default_steps: number;
  max_steps: number;
  default_guidance: number;
  supports_guidance: boolean;
  supports_negative_prompt: boolean;
}

/** The engine's safety checker as health reports it. */
export interface SafetyFacts {
  enabled: boolean;
  model?: string;
  policy?: 'flag' | 'blur' | 'fail';
  threshold?: number;
  allow_opt_out: boolean;
}

export const DEFAULT_ENGINE_LIMITS: EngineLimits = {
  max_ref_pixels: 1048576,
  min_side: 64,
  max_aspect: 8,
  max_images: 4,
  max_steps: 50,
  max_output_pixels: 4194304,
  max_batch: 4,
};
