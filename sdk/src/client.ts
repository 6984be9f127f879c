import { toImageUrl } from './images.js';
import { Runs } from './runs.js';
import { Transport } from './transport.js';
import type { ClientOptions, ImageInput, Run, RunEvent, RunInput } from './types.js';

export interface EditParams extends Omit<RunInput, 'prompt' | 'image_urls'> {
  prompt: string;
  /** 1-4 references: Buffers, Blobs, file paths, http(s) URLs, data URIs or raw base64. */
  images: ImageInput[];
  seed?: number;
  steps?: number;
}

export interface GenerateParams extends Omit<RunInput, 'prompt' | 'image_urls'> {
  prompt: string;
}

export interface CallOptions {
  /** Your own reference, echoed back on the run. */
  client_ref?: string;
  /** Deduplicates the create (see CreateOptions.idempotencyKey); a random one per call when absent. */
  idempotencyKey?: string;
  metadata?: Record<string, unknown>;
  callback_url?: string;
  onProgress?: (event: RunEvent) => void;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface RunResult {
  run: Run;
  /** The encoded bytes of each output, in order (JPEG unless output_format said otherwise). */
  images: Uint8Array[];
}

export class Kleinserve {
  readonly runs: Runs;
  private readonly transport: Transport;

  constructor(opts: ClientOptions = {}) {
    this.transport = new Transport(opts);
    this.runs = new Runs(this.transport, opts.pollIntervalMs ?? 500);
  }

  /** Edits 1-4 images with a prompt; resolves with the finished run and its image bytes. */
  async edit(params: EditParams, opts: CallOptions = {}): Promise<RunResult> {
    const { images, ...input } = params;
    const image_urls = await Promise.all(images.map((img, i) => toImageUrl(img, i)));
    return this.execute({ ...input, image_urls }, 'edit', opts);
  }

  /** Text-to-image: no references. */
  async generate(params: GenerateParams, opts: CallOptions = {}): Promise<RunResult> {
    return this.execute({ ...params }, 'text-to-image', opts);
  }

  /** Downloads one output URL (the server's URLs are unguessable; the key is sent only to our own servers). */
  async download(url: string, signal?: AbortSignal): Promise<Uint8Array> {
    const headers = this.transport.isOwnUrl(url) ? this.transport.authHeaders() : {};
    const res = await fetch(url, { headers, signal });
    if (!res.ok) throw new Error(`download ${url}: HTTP ${res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  }

  health(): Promise<{ ok: boolean; status: string; [k: string]: unknown }> {
    return this.transport.json('/v1/health');
  }

  private async execute(input: RunInput, model: 'edit' | 'text-to-image', opts: CallOptions): Promise<RunResult> {
    const created = await this.runs.create(
      { input, model, client_ref: opts.client_ref, metadata: opts.metadata, callback_url: opts.callback_url },
      { signal: opts.signal, idempotencyKey: opts.idempotencyKey },
    );
    const run = await this.runs.result(created.id, { onEvent: opts.onProgress, timeoutMs: opts.timeoutMs, signal: opts.signal });
    const outputs = run.output?.outputs ?? [];
    const images = await Promise.all(outputs.map((o) => this.download(o.url, opts.signal)));
    return { run, images };
  }
}
