// Canonical request -> validated run record. Inline images are decoded now (a refusal names the field) and
// their bytes persisted; URL images are checked against the SSRF guard now and fetched in the preprocess stage.
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
import { invalidInput, ServiceError, type FieldError } from '../errors.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { StorageWriteError } from '../storage/write-failure.ts';
import type { AdapterResolver } from '../adapters/resolver.ts';
import type { RunRequest } from './inputs.ts';
import { checkLoras } from './lora-intake.ts';
import { checkAgainstModel, defaultSteps, type EngineFacts } from './model-facts.ts';
import type { InputReferences } from './references.ts';
import type { EngineLimits } from './limits.ts';
import type { RunRecord, StoredImage } from './types.ts';

export interface IntakeDeps {
  objects: ObjectStore;
  allowlist: FetchAllowlist;
  /** The engine limits of a run's model (its run model_id), or of the one engine when only one runs. */
  limits: (runModelId?: string) => EngineLimits;
  maxInputPixels: number;
  /** Also checks callback_url: a callback to a private address is SSRF by another name. */
  checkCallbacks: boolean;
  /** Resolves inputs that point back at this server (uploaded assets, stored inputs of earlier runs). */
  references?: InputReferences;
  /** The loaded checkpoint's facts and safety settings, where this process knows them (runs/model-facts.ts). */
  facts?: (runModelId?: string) => EngineFacts;
  /**
   * Present where the engine's machine is this one (`serve`): adapters are fetched and checked now, so an
   * unreachable, oversized or malformed LoRA is a 422. Elsewhere only their names are checked here.
   */
  adapters?: AdapterResolver;
}

/** Inline images decoded during intake, by index, so dispatch need not decode them again. */
export type DecodedImages = Map<number, DecodedImage>;

export interface Intake {
  run: RunRecord;
  decoded: DecodedImages;
}

export function decodeOptions(limits: EngineLimits, maxInputPixels: number) {
  return {
    maxInputPixels,
    maxRefPixels: limits.max_ref_pixels,
    minSide: limits.min_side,
    maxAspect: limits.max_aspect,
  };
}

/** Field names are the canonical run's (Runflow's wire names); other surfaces rename them for their callers. */
export const imageField = (i: number) => `input.image_urls[${i}]`;

/** `owner`: the caller's scope, for references to its own uploaded assets. */
export async function intakeRun(deps: IntakeDeps, req: RunRequest, owner: string): Promise<Intake> {
  const { input } = req;
  const id = uuidv7();
  const errors: FieldError[] = [];
  const images: (StoredImage | null)[] = [];
  const decoded: DecodedImages = new Map();
  const inline: { key: string; stored: Promise<void> }[] = [];
  const limits = deps.limits(req.model_id);
  const opts = decodeOptions(limits, deps.maxInputPixels);

  await Promise.all(
    input.images.map(async (value, i) => {
      const field = imageField(i);
      try {
        const own = await deps.references?.resolve(value, field, owner);
        const src = own ? { kind: 'inline' as const, bytes: own.bytes, mime: own.mime } : parseImageSource(value, field);
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
  if (req.callback_url && deps.checkCallbacks) {
    try {
      await checkUrlAllowed(new URL(req.callback_url), 'callback_url', deps.allowlist);
    } catch (err) {
      if (!(err instanceof ImageInputError)) throw err;
      errors.push({ field: 'callback_url', reason: err.reason });
    }
  }
  const facts = deps.facts?.(req.model_id) ?? {};
  const steps = input.steps ?? defaultSteps(facts);
  errors.push(...checkAgainstModel(input, facts));
  const loras = input.loras ?? [];
  errors.push(...(await checkLoras(loras, deps.allowlist, deps.adapters)));
  if (steps > limits.max_steps) {
    errors.push({ field: 'input.steps', reason: `must be at most ${limits.max_steps}` });
  }
  if (errors.length) {
    await Promise.allSettled(inline.map((o) => o.stored));
    await Promise.allSettled(inline.map((o) => deps.objects.delete(o.key)));
    throw invalidInput(errors.sort((a, b) => a.field.localeCompare(b.field)));
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
    model_id: req.model_id,
    input: {
      prompt: input.prompt,
      images: images as StoredImage[],
      seed: input.seed ?? randomInt(0, 2 ** 47),
      steps,
      output_format: input.output_format,
      output_quality: input.output_quality,
      width: input.width,
      height: input.height,
      num_images: input.num_images,
      ...(input.guidance_scale !== undefined ? { guidance_scale: input.guidance_scale } : {}),
      ...(input.negative_prompt ? { negative_prompt: input.negative_prompt } : {}),
      ...(input.safety_checker !== undefined ? { safety_checker: input.safety_checker } : {}),
      ...(loras.length ? { loras: loras.map((l) => ({ path: l.path, scale: l.scale })) } : {}),
      ...(input.deterministic ? { deterministic: true } : {}),
    },
    output: null,
    metadata: req.metadata,
    client_ref: req.client_ref,
    callback_url: req.callback_url,
    ...(req.callback ? { callback: req.callback } : {}),
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
  if (state === 'unavailable') throw new ServiceError('unavailable', 'MODEL_UNAVAILABLE', `the model cannot be loaded: ${error ?? 'unknown error'}`);
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
