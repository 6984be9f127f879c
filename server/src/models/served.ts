// Which family members this process serves and from which checkpoint: `--model [PUBLIC=]CHECKPOINT`, repeatable.
// Without PUBLIC, a family checkpoint's repo id serves its own member and anything else (a local directory,
// `tiny`, `tiny-base`) serves flux-2-klein-4b, so `--model X` means what it always did.
import { DEFAULT_MODEL, findModel, KLEIN_MODELS } from './registry.ts';

export interface ServedModel {
  /** Public id (registry.ts). */
  id: string;
  /** What the engine loads: a diffusers-layout directory, a Hugging Face repo id, `tiny` or `tiny-base`. */
  checkpoint: string;
}

const KNOWN = KLEIN_MODELS.map((m) => m.short).join(', ');

export function parseServedModel(spec: string): ServedModel {
  const s = spec.trim();
  const eq = s.indexOf('=');
  if (eq >= 0) {
    const name = s.slice(0, eq).trim();
    const checkpoint = s.slice(eq + 1).trim();
    const model = findModel(name);
    if (!model) throw new Error(`--model ${JSON.stringify(spec)}: ${JSON.stringify(name)} is not a FLUX.2 [klein] model (one of: ${KNOWN})`);
    if (!checkpoint) throw new Error(`--model ${JSON.stringify(spec)}: give the checkpoint after "=" (a directory, a repo id, tiny or tiny-base)`);
    return { id: model.id, checkpoint };
  }
  if (!s) throw new Error('--model: empty value');
  const own = KLEIN_MODELS.find((m) => m.checkpoint.toLowerCase() === s.toLowerCase());
  return { id: own?.id ?? DEFAULT_MODEL, checkpoint: s };
}

/**
 * Each spec parsed, one engine per public id: a later spec for a model already named replaces the earlier one,
 * as a repeated `--model` always did (`--model X --model Y` still serves Y alone).
 */
export function parseServedModels(specs: string[]): ServedModel[] {
  const byId = new Map<string, ServedModel>();
  for (const m of specs.map(parseServedModel)) byId.set(m.id, m);
  return [...byId.values()];
}

/** The models a config serves: `models`, else its one `model` as flux-2-klein-4b (configs built without `models`). */
export function servedModels(cfg: { model: string; models?: ServedModel[] }): ServedModel[] {
  return cfg.models?.length ? cfg.models : [{ id: DEFAULT_MODEL, checkpoint: cfg.model }];
}
