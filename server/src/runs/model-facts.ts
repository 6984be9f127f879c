// Requests checked against the loaded checkpoint's facts (the engine's health `model_info` and `safety`), so
// a value the checkpoint would not use is a 422 at submit time instead of a failed run: the engine refuses it
// too (never drops it), but only once the run reaches it. The one exception is guidance_scale on a distilled
// checkpoint, which every provider's clients send: it is accepted, kept on the run, and documented as ignored.
// Unknown facts (engine still loading, or an api replica that sees only its regions) check nothing here; the
// engine's refusal then fails the run.
import type { ModelFacts, SafetyFacts } from '../engine/limits.ts';
import type { FieldError } from '../errors.ts';
import type { GenerateInput } from './inputs.ts';
import { INPUT_LIMITS } from './limits.ts';

export interface EngineFacts {
  model_info?: ModelFacts | null;
  safety?: SafetyFacts;
}

/** Base checkpoints' guidance range (the engine's, docs/engine-protocol.md). */
const BASE_GUIDANCE = { min: 1, max: 20 };

/** Steps when the request names none: the checkpoint's default (4 distilled, 50 base). */
export function defaultSteps(facts: EngineFacts): number {
  return facts.model_info?.default_steps ?? INPUT_LIMITS.defaultSteps;
}

export function checkAgainstModel(input: GenerateInput, facts: EngineFacts): FieldError[] {
  const errors: FieldError[] = [];
  const m = facts.model_info;
  const g = input.guidance_scale;
  const neg = input.negative_prompt ?? '';
  if (m && !m.supports_guidance) {
    // guidance_scale is accepted and ignored here (documented): Runflow's, fal's and Replicate's clients send it
    // for every klein checkpoint, and a distilled one has no guidance pass to give it to (dispatch leaves it out).
    if (neg !== '') {
      errors.push({ field: 'input.negative_prompt', reason: `${m.id} is a distilled checkpoint and takes no negative prompt (it runs no guidance pass)` });
    }
  } else if (m) {
    if (g !== undefined && (g < BASE_GUIDANCE.min || g > BASE_GUIDANCE.max)) {
      errors.push({ field: 'input.guidance_scale', reason: `must be between ${BASE_GUIDANCE.min} and ${BASE_GUIDANCE.max} on ${m.id}` });
    }
    if (neg !== '' && (g ?? m.default_guidance) <= 1) {
      errors.push({ field: 'input.negative_prompt', reason: 'has no effect at guidance_scale 1 (no unconditional pass): raise guidance_scale or leave it out' });
    }
  }
  const s = facts.safety;
  if (input.safety_checker === false && s?.enabled && !s.allow_opt_out) {
    errors.push({ field: 'input.enable_safety_checker', reason: 'this server does not let requests turn its safety checker off' });
  }
  return errors;
}
