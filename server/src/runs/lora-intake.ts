// The submit-time check of a run's LoRAs. Everywhere: the count, each scale, the form of each path, and the
// SSRF guard on URLs. Where the engine runs on this machine (`adapters` given): each adapter is also fetched
// into the cache and its header read, so unreachable, oversized, non-LoRA and over-rank files are 422s now.
// What only the model can tell (no module of it matches, a shape of another model size) is the engine's
// refusal, which fails the run with the same field (dispatch/local-dispatcher.ts).
import { loraField, type AdapterResolver } from '../adapters/resolver.ts';
import { LoraRefusal, parseLoraSource } from '../adapters/source.ts';
import type { FieldError } from '../errors.ts';
import { checkUrlAllowed, ImageInputError, type FetchAllowlist } from '../images/index.ts';
import type { LoraInput } from './inputs.ts';
import { INPUT_LIMITS } from './limits.ts';

export async function checkLoras(loras: LoraInput[], allowlist: FetchAllowlist, adapters?: AdapterResolver): Promise<FieldError[]> {
  if (loras.length > INPUT_LIMITS.maxLoras) return [{ field: 'input.loras', reason: `takes at most ${INPUT_LIMITS.maxLoras} LoRAs` }];
  const errors: FieldError[] = [];
  await Promise.all(
    loras.map(async (l, i) => {
      if (!(l.scale >= INPUT_LIMITS.minLoraScale && l.scale <= INPUT_LIMITS.maxLoraScale)) {
        errors.push({ field: loraField(i, 'scale'), reason: `must be between ${INPUT_LIMITS.minLoraScale} and ${INPUT_LIMITS.maxLoraScale}` });
      }
      const field = loraField(i);
      try {
        const src = parseLoraSource(l.path, field);
        if (src.kind === 'url') await checkUrlAllowed(src.url, field, allowlist);
        if (adapters) await adapters.resolve(l, field);
      } catch (err) {
        if (err instanceof LoraRefusal) errors.push({ field, reason: err.text });
        else if (err instanceof ImageInputError) errors.push({ field, reason: `not_allowed: ${err.reason}` });
        else throw err;
      }
    }),
  );
  return errors;
}
