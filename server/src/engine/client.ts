// One multiplexed connection to the engine: many concurrent requests matched by id, progress frames routed
// to their request, and an idle deadline per request so a hung engine is noticed.
import net from 'node:net';
import type { EngineLimits, ModelFacts, SafetyFacts } from './limits.ts';
import { encodeFrame, FrameDecoder, type Frame, type FrameHeader } from './protocol.ts';

export class EngineError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly field?: string,
    /** A machine-readable reason where the engine gives one (refused LoRAs). */
    readonly reason?: string,
  ) {
    super(message);
  }
}
/** The connection died (engine crashed or was killed) while the request was outstanding. */
export class EngineConnectionError extends Error {}
/** No frame arrived for a request within its deadline: treat the engine as hung. */
export class EngineDeadlineError extends Error {}

export type EngineImage =
  | { format: 'rgb8'; width: number; height: number; data: Buffer }
  | { format: 'png'; data: Buffer };

export interface GenerateParams {
  prompt: string;
  images: EngineImage[];
  seed: number | null;
  steps: number;
  width: number | null;
  height: number | null;
  num_images: number;
  output_format: 'jpeg' | 'png' | 'webp';
  output_quality: number;
  /** Absent: the checkpoint's default. */
  guidance_scale?: number;
  negative_prompt?: string;
  /** false: skip the safety checker for this request (the engine refuses it unless opting out is allowed). */
  safety_checker?: boolean;
  /** Files on the engine's machine, named with their sha256 (the engine checks it and caches by it). */
  loras?: { path: string; sha256: string; scale: number }[];
  /** true: never batched, prompt encoded alone: the same bytes for the same input and seed whatever is queued. */
  deterministic?: boolean;
}

export interface EngineTimings {
  queue_ms?: number;
  text_encode_ms?: number;
  vae_encode_ms?: number;
  denoise_ms?: number;
  decode_ms?: number;
  image_encode_ms?: number;
  total_ms?: number;
  [k: string]: number | undefined;
}

export interface GenerateResult {
  /** `nsfw`: the safety checker flagged the image (false when none ran: see `safety_checked`). */
  images: { width: number; height: number; content_type: string; bytes: Buffer; nsfw?: boolean; nsfw_score?: number | null }[];
  safety_checked?: boolean;
  seeds: number[];
  timings: EngineTimings;
  batch_size?: number;
  cache?: unknown;
}

export interface ProgressEvent {
  step: number;
  steps: number;
  step_ms?: number;
  elapsed_ms?: number;
}

export interface EngineHealth {
  ok: boolean;
  status: 'loading' | 'ready' | 'failed';
  model?: string;
  device?: string;
  dtype?: string;
  queue_depth?: number;
  in_flight?: number;
  error?: unknown;
  limits?: EngineLimits;
  model_info?: ModelFacts | null;
  safety?: SafetyFacts;
}

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  onProgress?: (p: ProgressEvent) => void;
  idleMs: number;
  timer?: NodeJS.Timeout;
}

export interface RequestOptions {
  onProgress?: (p: ProgressEvent) => void;
  /** Fail the request if no frame for it arrives within this many ms (0 = never). */
  idleDeadlineMs?: number;
  signal?: AbortSignal;
}

export class EngineClient {
  private pending = new Map<string, Pending>();
  private nextId = 0;
  private closed = false;
  private readonly decoder = new FrameDecoder();
  onClose?: (err: Error) => void;

  private constructor(private readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new EngineConnectionError(`engine connection error: ${err.message}`)));
    socket.on('close', () => this.fail(new EngineConnectionError('engine connection closed')));
  }

  static connect(address: string): Promise<EngineClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(parseAddress(address));
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(new EngineClient(socket));
      });
      socket.once('error', reject);
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  async health(timeoutMs = 5000): Promise<EngineHealth> {
    const f = await this.request({ op: 'health' }, [], { idleDeadlineMs: timeoutMs });
    return f.header as unknown as EngineHealth;
  }

  async metrics(timeoutMs = 5000): Promise<string> {
    const f = await this.request({ op: 'metrics' }, [], { idleDeadlineMs: timeoutMs });
    return f.blobs[0]?.toString('utf8') ?? '';
  }

  async generate(params: GenerateParams, opts: RequestOptions = {}): Promise<GenerateResult> {
    const { images, ...rest } = params;
    const refs = images.map((img) =>
      img.format === 'rgb8' ? { format: 'rgb8', width: img.width, height: img.height } : { format: 'png' },
    );
    const header = { op: 'generate', ...rest, images: refs, progress: Boolean(opts.onProgress) };
    const f = await this.request(header, images.map((i) => i.data), opts);
    const h = f.header as unknown as {
      images: { width: number; height: number; content_type: string; nsfw?: boolean; nsfw_score?: number | null }[];
      safety_checked?: boolean;
      seeds: number[];
      timings: EngineTimings;
      batch_size?: number;
      cache?: unknown;
    };
    return {
      images: h.images.map((meta, i) => ({ ...meta, bytes: f.blobs[i] })),
      seeds: h.seeds,
      safety_checked: h.safety_checked,
      timings: h.timings ?? {},
      batch_size: h.batch_size,
      cache: h.cache,
    };
  }

  async cancel(target: string): Promise<boolean> {
    const f = await this.request({ op: 'cancel', target }, [], { idleDeadlineMs: 5000 });
    return Boolean(f.header.canceled);
  }

  /** Sends one request; resolves with its answering frame, rejects with EngineError on an error frame. */
  request(header: Record<string, unknown>, blobs: Buffer[], opts: RequestOptions = {}): Promise<Frame> {
    if (this.closed) return Promise.reject(new EngineConnectionError('engine connection closed'));
    const id = `q${++this.nextId}`;
    return new Promise<Frame>((resolve, reject) => {
      const p: Pending = { resolve, reject, onProgress: opts.onProgress, idleMs: opts.idleDeadlineMs ?? 0 };
      this.pending.set(id, p);
      this.arm(id, p);
      if (opts.signal) {
        const onAbort = () => {
          // The engine answers the target with CANCELED; that frame settles the request.
          this.cancel(id).catch(() => {});
        };
        if (opts.signal.aborted) onAbort();
        else opts.signal.addEventListener('abort', onAbort, { once: true });
      }
      // Corked so prefix, header and pixel blobs leave in one writev instead of one syscall each.
      this.socket.cork();
      for (const part of encodeFrame({ ...header, id } as Omit<FrameHeader, 'v'>, blobs)) this.socket.write(part);
      this.socket.uncork();
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private arm(id: string, p: Pending): void {
    if (!p.idleMs) return;
    if (p.timer) clearTimeout(p.timer);
    p.timer = setTimeout(() => {
      this.pending.delete(id);
      p.reject(new EngineDeadlineError(`engine sent nothing for ${p.idleMs} ms`));
    }, p.idleMs);
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.fail(new EngineConnectionError(`engine protocol error: ${(err as Error).message}`));
      this.socket.destroy();
      return;
    }
    for (const f of frames) this.dispatch(f);
  }

  private dispatch(f: Frame): void {
    const id = f.header.id;
    if (id === null || id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return;
    if (f.header.op === 'progress') {
      this.arm(id, p);
      p.onProgress?.(f.header as unknown as ProgressEvent);
      return;
    }
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if (f.header.op === 'error' || f.header.ok === false) {
      const e = (f.header.error ?? {}) as { code?: string; message?: string; field?: string; reason?: string };
      p.reject(new EngineError(e.code ?? 'INTERNAL', e.message ?? 'engine error', e.field, e.reason));
    } else {
      p.resolve(f);
    }
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    this.onClose?.(err);
  }
}

export function parseAddress(address: string): net.NetConnectOpts {
  if (address.startsWith('unix:')) return { path: address.slice(5) };
  const m = /^tcp:(.+):(\d+)$/.exec(address);
  if (m) return { host: m[1], port: Number(m[2]) };
  throw new Error(`bad engine address ${address}`);
}
