// The run as the control plane keeps it. Each surface renders it into its own wire shape.
import type { EditInput } from './inputs.ts';

export const RUN_STATUSES = ['queued', 'dispatching', 'running', 'succeeded', 'failed', 'canceled'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];
export const TERMINAL: ReadonlySet<RunStatus> = new Set(['succeeded', 'failed', 'canceled']);
export const isTerminal = (s: RunStatus): boolean => TERMINAL.has(s);

export type StoredImage =
  | { kind: 'url'; url: string }
  /** Inline bytes live in the object store under `key`, so a restart can still run the run. */
  | { kind: 'inline'; key: string; bytes: number; mime?: string };

/**
 * The canonical input as a run records it: images stored (a restart can still run it), seed and steps resolved.
 * Everything else is the caller's input as the surface translated it.
 */
export interface RunInput extends Omit<EditInput, 'images' | 'seed' | 'steps'> {
  images: StoredImage[];
  seed: number;
  steps: number;
}

export interface StoredOutputImage {
  key: string;
  content_type: string;
  width: number;
  height: number;
  /** The operator's safety checker flagged it (absent or false: not flagged, or no checker ran). */
  nsfw?: boolean;
}

export interface RunTiming {
  queue_ms?: number;
  preprocess_ms?: number;
  [k: string]: number | undefined;
}

export interface StoredOutput {
  images: StoredOutputImage[];
  seed: number;
  timing: RunTiming;
}

export interface RunRecord {
  id: string;
  status: RunStatus;
  model_id: string;
  input: RunInput;
  output: StoredOutput | null;
  metadata: Record<string, unknown> | null;
  client_ref: string | null;
  callback_url: string | null;
  created_at: number;
  started_at: number | null;
  completed_at: number | null;
  failure_code: string | null;
  failure_message: string | null;
  failure_stage_code: string | null;
  /** Dispatch attempts so far; bounded so a run that keeps killing the engine ends as failed. */
  attempts: number;
  /** Random per-run part of the output key: unguessable, and stable so a retried run overwrites, never doubles. */
  output_token: string;
  /** Where admission sent the run: a cluster region, or absent/null for the local engine (and parked runs). */
  region?: string | null;
  /** How callbacks to callback_url are shaped, signed and when they go; absent/null: the default. */
  callback?: CallbackSpec | null;
}

/**
 * A run's callback contract, for surfaces whose protocol differs from the default (terminal statuses only,
 * the default body, the server's HMAC). Stored with the run, so every delivery, retry and restart agrees.
 */
export interface CallbackSpec {
  /** Names the body renderer the role registered for the surface that made the run. */
  format: string;
  /** Statuses whose entry sends a callback (default: the terminal ones). */
  on?: RunStatus[];
  signing?: DeliverySigning;
}

/** How a delivery is signed: a scheme the deliverer knows, and the caller's own secret where the scheme takes one. */
export interface DeliverySigning {
  scheme: 'hmac-server' | 'standard-webhooks' | 'hmac-caller' | 'fal';
  secret?: string;
  /** fal: the user id the signature binds (the caller's key id, never the key). */
  userId?: string;
  /** hmac-caller: the header the signature goes in. */
  header?: string;
}

export type RunPatch = Partial<Omit<RunRecord, 'id' | 'model_id' | 'input' | 'created_at' | 'output_token'>>;
