// Shared by the surfaces that create runs outside the Runflow route (OpenAI images, text-to-image):
// validated body -> intake -> lifecycle.create -> dispatcher, and the answer shapes they need.
import type { FastifyRequest } from 'fastify';
import { callerScope, claimIdempotency, idempotencyKeyOf, type IdempotencyOptions } from '../idempotency/claim.ts';
import type { DecodedImage } from '../images/index.ts';
import { runNotFound } from './errors.ts';
import type { Engine } from '../engine/supervisor.ts';
import { assertModelAvailable, intakeEditRun, type IntakeDeps } from '../runs/intake.ts';
import type { RunLifecycle } from '../runs/lifecycle.ts';
import { toRunObject, type RunObject } from '../runs/run-object.ts';
import type { RunRecord } from '../runs/types.ts';
import { waitForTerminal } from '../runs/wait.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import type { CreateRunBody } from './runs.schemas.ts';
import { inlineOutputs } from './sync-mode.ts';

/** A subset of AppDeps, so app.ts can pass its deps as they are. */
export interface SubmitDeps {
  intake: IntakeDeps;
  lifecycle: RunLifecycle;
  objects: ObjectStore;
  engine: Pick<Engine, 'state' | 'status'>;
  /** Hands inline images decoded during the POST to the dispatcher so it need not decode them again. */
  prime: (runId: string, decoded: Map<number, DecodedImage>) => void;
  baseUrl: () => string;
  /** Cap on how long a request may be held for its run, in seconds. */
  waitCapSeconds: number;
  hardening: { idempotency: IdempotencyOptions };
}

export const MODEL_TEXT_TO_IMAGE = 'black-forest-labs/flux-2-klein-4b';

/**
 * `body.input` may carry alias fields; intake resolves them through normalizeEditInput. A repeat of an earlier
 * create (same Idempotency-Key header or client_ref, same API key, within the window) returns the first run.
 */
export async function submitRun(deps: SubmitDeps, req: FastifyRequest, modelId: string, body: CreateRunBody): Promise<RunRecord> {
  assertModelAvailable(deps.engine.state, deps.engine.status().error);
  const claim = await claimIdempotency(deps.hardening.idempotency, callerScope(req), idempotencyKeyOf(req, body.client_ref));
  if (claim.kind === 'existing') {
    const first = await deps.lifecycle.store.get(claim.runId);
    if (!first) throw runNotFound(claim.runId);
    return first;
  }
  try {
    const { run, decoded } = await intakeEditRun(deps.intake, modelId, body);
    if (claim.kind === 'new') await claim.bind(run.id);
    // Prime first: once created, the run is claimable.
    deps.prime(run.id, decoded);
    await deps.lifecycle.create(run);
    return run;
  } catch (err) {
    if (claim.kind === 'new') await claim.release();
    throw err;
  }
}

export function waitFor(deps: SubmitDeps, run: RunRecord, seconds: number, signal?: AbortSignal): Promise<RunRecord> {
  return waitForTerminal(deps.lifecycle.store, deps.lifecycle.bus, run, seconds, signal);
}

/** The encoded bytes of each output of a finished run, in order. */
export function outputBytes(deps: SubmitDeps, run: RunRecord): Promise<Buffer[]> {
  return Promise.all((run.output?.images ?? []).map((img) => deps.objects.get(img.key)));
}

/** sync_mode: the run object with every output URL replaced by a data URI of its bytes. */
export function runObjectWithDataUris(deps: SubmitDeps, run: RunRecord): Promise<RunObject> {
  return inlineOutputs(toRunObject(run, deps.baseUrl()), run, deps.objects);
}

/** An abort signal that fires when the HTTP client goes away, so a held request stops waiting. */
export function clientGone(raw: import('node:http').IncomingMessage): AbortSignal {
  const ac = new AbortController();
  raw.socket.once('close', () => ac.abort());
  return ac.signal;
}
