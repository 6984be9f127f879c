// Request -> validated run. Inline images are decoded now (a refusal is a 422 naming the field) and their
// bytes persisted; URL images are checked against the SSRF guard now and fetched in the preprocess stage.
import { randomBytes, randomInt } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import {
  checkUrlAllowed,
  decodeImage,
  ImageInputError,
  parseImageSource,
  type DecodedImage,
  type FetchAllowlist,
} from '../images/index.ts';
import { ApiError, validationError, type FieldError } from '../routes/errors.ts';
import { normalizeEditInput, type CreateRunBody } from '../routes/runs.schemas.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { StorageWriteError } from '../storage/write-failure.ts';
import type { EngineLimits } from '../engine/client.ts';
import type { RunRecord, StoredImage } from './types.ts';

export interface IntakeDeps {
  objects: ObjectStore;
  allowlist: FetchAllowlist;
  limits: () => EngineLimits;
  maxInputPixels: number;
  /** Also checks callback_url: a callback to a private address is SSRF by another name. */
  checkCallbacks: boolean;
}

export interface Intake {
  run: RunRecord;
  /** Decoded inline images by index, handed to the dispatcher so it need not decode them again. */
  decoded: Map<number, DecodedImage>;
}

export function decodeOptions(limits: EngineLimits, maxInputPixels: number) {
  return {
    maxInputPixels,
    maxRefPixels: limits.max_ref_pixels,
    minSide: limits.min_side,
    maxAspect: limits.max_aspect,
  };
}

export async function intakeEditRun(deps: IntakeDeps, modelId: string, body: CreateRunBody): Promise<Intake> {
  const params = normalizeEditInput(body.input);
  const id = uuidv7();
  const errors: FieldError[] = [];
  const images: (StoredImage | null)[] = [];
  const decoded = new Map<number, DecodedImage>();
  const inline: { key: string; stored: Promise<void> }[] = [];
  const opts = decodeOptions(deps.limits(), deps.maxInputPixels);

  await Promise.all(
    body.input.image_urls.map(async (value, i) => {
      const field = `input.image_urls[${i}]`;
      try {
        const src = parseImageSource(value, field);
        if (src.kind === 'url') {
          await checkUrlAllowed(src.url, field, deps.allowlist);
          images[i] = { kind: 'url', url: src.url.toString() };
        } else {
          // Decode (sharp's thread pool) and persist the bytes at the same time; a refusal deletes them below.
          const decoding = decodeImage(src.bytes, field, opts);
          const key = `inputs/${id}/${i}`;
          inline.push({ key, stored: storeInput(deps.objects, key, src.bytes, field) });
          const img = await decoding;
          decoded.set(i, img);
          images[i] = { kind: 'inline', key, bytes: src.bytes.length, mime: src.mime ?? `image/${img.format}` };
        }
      } catch (err) {
        if (!(err instanceof ImageInputError)) throw err;
        errors.push({ field: err.field, reason: err.reason });
        images[i] = null;
      }
    }),
  );
  if (body.callback_url && deps.checkCallbacks) {
    try {
      await checkUrlAllowed(new URL(body.callback_url), 'callback_url', deps.allowlist);
    } catch (err) {
      if (!(err instanceof ImageInputError)) throw err;
      errors.push({ field: 'callback_url', reason: err.reason });
    }
  }
  if (params.steps > deps.limits().max_steps) {
    errors.push({ field: 'input.steps', reason: `must be at most ${deps.limits().max_steps}` });
  }
  if (errors.length) {
    await Promise.allSettled(inline.map((o) => o.stored));
    await Promise.allSettled(inline.map((o) => deps.objects.delete(o.key)));
    throw validationError(errors.sort((a, b) => a.field.localeCompare(b.field)));
  }
  try {
    await Promise.all(inline.map((o) => o.stored));
  } catch (err) {
    // A full or failing store: drop what did get written, then the request fails (507, naming the field).
    await Promise.allSettled(inline.map((o) => o.stored));
    await Promise.allSettled(inline.map((o) => deps.objects.delete(o.key)));
    throw err;
  }

  const run: RunRecord = {
    id,
    status: 'queued',
    model_id: modelId,
    input: {
      prompt: params.prompt,
      images: images as StoredImage[],
      seed: params.seed ?? randomInt(0, 2 ** 47),
      steps: params.steps,
      output_format: params.output_format,
      output_quality: params.output_quality,
      width: params.width,
      height: params.height,
      num_images: params.num_images,
    },
    output: null,
    metadata: body.metadata ?? null,
    client_ref: body.client_ref ?? null,
    callback_url: body.callback_url ?? null,
    created_at: Date.now(),
    started_at: null,
    completed_at: null,
    failure_code: null,
    failure_message: null,
    failure_stage_code: null,
    attempts: 0,
    output_token: randomBytes(16).toString('hex'),
  };
  return { run, decoded };
}

export function assertModelAvailable(state: string, error: string | null): void {
  if (state === 'unavailable') throw new ApiError(503, 'MODEL_UNAVAILABLE', `the model cannot be loaded: ${error ?? 'unknown error'}`);
}

/**
 * Starts writing one inline input. The write runs while the image decodes and is awaited later, so its
 * failure is handled from the start (an unhandled rejection would otherwise end the process), and a
 * refusal names the request field rather than the object key.
 */
function storeInput(objects: ObjectStore, key: string, bytes: Buffer, field: string): Promise<void> {
  const stored = objects.put(key, bytes).catch((err) => {
    throw err instanceof StorageWriteError ? err.renamed(field) : err;
  });
  stored.catch(() => {});
  return stored;
}
