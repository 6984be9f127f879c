// The preprocess stage: every image of a run becomes decoded RGB for the engine. URL images are fetched
// here (under the SSRF guard); inline ones come from the intake's cache or, after a restart, from storage.
// LoRAs are resolved here too, on the machine whose engine reads them (the worker in a cluster).
import type { AdapterResolver, ResolvedLora } from '../adapters/resolver.ts';
import { LoraRefusal } from '../adapters/source.ts';
import { decodeImage, fetchImage, ImageInputError, type DecodedImage, type FetchOptions } from '../images/index.ts';
import type { EngineImage } from '../engine/client.ts';
import type { EngineLimits } from '../engine/limits.ts';
import { decodeOptions } from '../runs/intake.ts';
import type { RunRecord } from '../runs/types.ts';
import type { ObjectStore } from '../storage/object-store.ts';

export interface PreprocessDeps {
  objects: ObjectStore;
  fetch: FetchOptions;
  limits: () => EngineLimits;
  maxInputPixels: number;
  /** Resolves LoRA names to files on this machine; a run with LoRAs fails without it. */
  adapters?: AdapterResolver;
}

/** A refused or unreachable image in the preprocess stage; `code` says which. */
export class PreprocessFailure extends Error {
  constructor(
    readonly code: 'IMAGE_FETCH_FAILED' | 'LORA_FETCH_FAILED' | 'INPUT_VALIDATION_FAILED',
    readonly cause: ImageInputError | LoraRefusal,
  ) {
    super(cause.message);
  }
}

/** Each LoRA of the run as a file here plus its sha256; a refusal fails the run naming input.loras[i]. */
export async function prepareLoras(deps: PreprocessDeps, run: RunRecord): Promise<ResolvedLora[]> {
  const loras = run.input.loras ?? [];
  if (!loras.length) return [];
  if (!deps.adapters) {
    throw new PreprocessFailure('INPUT_VALIDATION_FAILED', new LoraRefusal('input.loras[0].path', 'not_allowed', 'this worker does not resolve LoRAs'));
  }
  const { resolved, refusals } = await deps.adapters.resolveAll(loras);
  const first = refusals[0];
  if (first) throw new PreprocessFailure(first.reason === 'unreachable' ? 'LORA_FETCH_FAILED' : 'INPUT_VALIDATION_FAILED', first);
  return resolved;
}

const tag = (code: PreprocessFailure['code']) => (err: unknown) => {
  throw err instanceof ImageInputError ? new PreprocessFailure(code, err) : err;
};

export async function prepareImages(
  deps: PreprocessDeps,
  run: RunRecord,
  cached: Map<number, DecodedImage> | undefined,
): Promise<EngineImage[]> {
  const opts = decodeOptions(deps.limits(), deps.maxInputPixels);
  return Promise.all(
    run.input.images.map(async (img, i): Promise<EngineImage> => {
      const field = `input.image_urls[${i}]`;
      let decoded = cached?.get(i);
      if (!decoded) {
        const bytes =
          img.kind === 'url'
            ? await fetchImage(new URL(img.url), field, deps.fetch).catch(tag('IMAGE_FETCH_FAILED'))
            : await deps.objects.get(img.key);
        decoded = await decodeImage(bytes, field, opts).catch(tag('INPUT_VALIDATION_FAILED'));
      }
      return { format: 'rgb8', width: decoded.width, height: decoded.height, data: decoded.rgb };
    }),
  );
}
