export type RunStatus = 'queued' | 'dispatching' | 'running' | 'succeeded' | 'failed' | 'canceled';

export const TERMINAL_STATUSES: readonly RunStatus[] = ['succeeded', 'failed', 'canceled'];

export function isTerminal(status: RunStatus): boolean {
  return TERMINAL_STATUSES.includes(status);
}

export interface RunOutputImage {
  url: string;
  type: 'image';
  content_type: string;
  width: number;
  height: number;
}

export interface RunTiming {
  queue_ms?: number;
  preprocess_ms?: number;
  text_encode_ms?: number;
  vae_encode_ms?: number;
  denoise_ms?: number;
  decode_ms?: number;
  image_encode_ms?: number;
  total_ms?: number;
  [stage: string]: number | undefined;
}

export interface RunOutput {
  outputs: RunOutputImage[];
  seed: number;
  timing: RunTiming;
  nsfw_detected: boolean;
}

export interface Run {
  id: string;
  status_code: RunStatus;
  model_id: string;
  input: Record<string, unknown>;
  output: RunOutput | null;
  metadata: Record<string, unknown> | null;
  client_ref: string | null;
  callback_url: string | null;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  duration_ms: number | null;
  cost: unknown;
  failure_code: string | null;
  failure_message: string | null;
  failure_stage_code: string | null;
  error: { code: string; message: string } | null;
  links?: Record<string, string>;
}

/** An image as a caller has it: bytes, a Blob, a local file path, an http(s) URL, a data URI or raw base64. */
export type ImageInput = Uint8Array | ArrayBuffer | Blob | string;

export type ImageSizePreset =
  | 'square_hd' | 'square' | 'portrait_4_3' | 'portrait_16_9' | 'landscape_4_3' | 'landscape_16_9';

/** The run input as the API takes it; extra alias fields (fal/Replicate style) pass through untouched. */
export interface RunInput {
  prompt: string;
  image_urls?: string[];
  seed?: number;
  steps?: number;
  output_format?: 'jpeg' | 'png' | 'webp';
  output_quality?: number;
  width?: number;
  height?: number;
  image_size?: ImageSizePreset | { width: number; height: number };
  num_images?: number;
  [alias: string]: unknown;
}

export interface CreateRunParams {
  input: RunInput;
  callback_url?: string | null;
  metadata?: Record<string, unknown> | null;
  /** The caller's own reference, echoed back on the run; not an idempotency key (see CreateOptions.idempotencyKey). */
  client_ref?: string;
  /** Model route: 'edit' (default) needs 1-4 images, 'text-to-image' needs none. */
  model?: 'edit' | 'text-to-image';
}

/** One Server-Sent Event from `GET /v1/runs/{id}/events`. */
export type RunEvent =
  | { type: 'status'; run_id: string; status: RunStatus; at?: string }
  | { type: 'progress'; run_id: string; step: number; steps: number; step_ms: number; elapsed_ms: number }
  | { type: 'run'; run: Run };

export interface FetchLike {
  (input: string, init?: RequestInit): Promise<Response>;
}

export interface ClientOptions {
  /** One base URL, or several in order of preference (client-side failover across regions). */
  baseUrl?: string | string[];
  apiKey?: string;
  /** Attempts per request across all base URLs, on network errors and 5xx (default 4). */
  maxRetries?: number;
  /** First backoff delay in ms, doubled each retry (default 250). */
  retryDelayMs?: number;
  /** Per-attempt timeout in ms (default 60000). */
  timeoutMs?: number;
  /** Poll interval for runs.wait when streaming is unavailable (default 500 ms). */
  pollIntervalMs?: number;
  fetch?: FetchLike;
}
