// The preprocess stage: every image of a run becomes decoded RGB for the engine. URL images are fetched
// here (under the SSRF guard); inline ones come from the intake's cache or, after a restart, from storage.
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
}

/** A refused or unreachable image in the preprocess stage; `code` says which. */
export class PreprocessFailure extends Error {
  constructor(
    readonly code: 'IMAGE_FETCH_FAILED' | 'INPUT_VALIDATION_FAILED',
    readonly cause: ImageInputError,
  ) {
    super(cause.message);
  }
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
