// The FLUX.2 [klein] family as this service names it: each member's public id (the route and the run's
// model_id) and the Hugging Face checkpoint it is served from. Routes, served-model specs, engines, queues and
// placement all derive from this one list. A run's model_id is the member's id, plus "/edit" for edit runs.

export interface KleinModel {
  /** Public id: `/v1/models/{id}/runs` is its text-to-image route, `/v1/models/{id}/edit/runs` its edit route. */
  id: string;
  /** The id without its owner (`flux-2-klein-4b`): the SDK's short form, data subdirectories, queue names. */
  short: string;
  /** The checkpoint in diffusers layout that serves it, as a Hugging Face repo id. */
  checkpoint: string;
  /** Distilled (4 steps, no guidance) or base (true classifier-free guidance). */
  distilled: boolean;
}

const member = (short: string, checkpoint: string, distilled: boolean): KleinModel => ({
  id: `black-forest-labs/${short}`,
  short,
  checkpoint,
  distilled,
});

export const KLEIN_MODELS: readonly KleinModel[] = [
  member('flux-2-klein-4b', 'black-forest-labs/FLUX.2-klein-4B', true),
  member('flux-2-klein-9b', 'black-forest-labs/FLUX.2-klein-9B', true),
  member('flux-2-klein-base-4b', 'black-forest-labs/FLUX.2-klein-base-4B', false),
  member('flux-2-klein-base-9b', 'black-forest-labs/FLUX.2-klein-base-9B', false),
];

/** The model a checkpoint serves when the operator names no public id (and what runs without a model are). */
export const DEFAULT_MODEL = KLEIN_MODELS[0].id;

const EDIT_SUFFIX = '/edit';

/** A family member by its public id, full (`black-forest-labs/flux-2-klein-9b`) or short (`flux-2-klein-9b`). */
export function findModel(name: string): KleinModel | undefined {
  const n = name.toLowerCase();
  return KLEIN_MODELS.find((m) => m.id === n || m.short === n);
}

/** The run model_id of a member's edit mode. */
export const editModelId = (model: string): string => model + EDIT_SUFFIX;

/** The family member a run's model_id belongs to (edit and text-to-image runs of one model share its engine). */
export const modelOfRun = (runModelId: string): string =>
  runModelId.endsWith(EDIT_SUFFIX) ? runModelId.slice(0, -EDIT_SUFFIX.length) : runModelId;

/** Every run model_id one member's engine takes. */
export const runModelIds = (model: string): string[] => [model, editModelId(model)];

/** `flux-2-klein-base-4b` -> `KleinBase4b`: the member's part of generated names (OpenAPI operation ids). */
export const pascalName = (m: KleinModel): string =>
  m.short.replace(/^flux-2-/, '').replace(/(^|-)(\w)/g, (_, __, c: string) => c.toUpperCase());
