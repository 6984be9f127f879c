// A protocol-v1-speaking stand-in for the Python engine, for UNIT tests only (e2e tests use the real engine).
// It renders a flat-colour image of the first reference's size so callers get real, decodable bytes.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { encodeFrame, FrameDecoder, type FrameHeader } from '../../src/engine/protocol.ts';

export interface FakeEngineOptions {
  stepMs?: number;
  /** Called per generate; return an error code to fail it, 'hang' to never answer, 'crash' to drop the connection. */
  behaviour?: (header: FrameHeader) => string | undefined;
}

export class FakeEngine {
  readonly socketPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ks-fake-')), 'e.sock');
  readonly server: net.Server;
  readonly requests: FrameHeader[] = [];
  private cancels = new Set<string>();

  constructor(private readonly opts: FakeEngineOptions = {}) {
    this.server = net.createServer((sock) => this.onConnection(sock));
  }

  get address(): string {
    return `unix:${this.socketPath}`;
  }

  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.socketPath, r));
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }

  private onConnection(sock: net.Socket): void {
    const dec = new FrameDecoder();
    const send = (h: Record<string, unknown>, blobs: Buffer[] = []) => {
      if (!sock.destroyed) for (const p of encodeFrame(h as Omit<FrameHeader, 'v'>, blobs)) sock.write(p);
    };
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      for (const { header, blobs } of dec.push(chunk)) void this.handle(header, blobs, send, sock);
    });
  }

  private async handle(h: FrameHeader, blobs: Buffer[], send: (h: Record<string, unknown>, b?: Buffer[]) => void, sock: net.Socket) {
    const id = h.id;
    if (h.op === 'health') {
      return send({ id, op: 'health', ok: true, status: 'ready', model: 'fake', device: 'cpu', dtype: 'float32', queue_depth: 0, in_flight: 0, error: null,
        limits: { max_ref_pixels: 1048576, min_side: 64, max_aspect: 8, max_images: 4, max_steps: 50, max_output_pixels: 4194304, max_batch: 4 } });
    }
    if (h.op === 'metrics') return send({ id, op: 'metrics', ok: true }, [Buffer.from('kleinserve_engine_fake 1\n')]);
    if (h.op === 'cancel') {
      this.cancels.add(h.target as string);
      return send({ id, op: 'cancel', ok: true, canceled: true });
    }
    if (h.op !== 'generate') return send({ id, op: 'error', ok: false, error: { code: 'INVALID_REQUEST', message: 'unknown op' } });
    this.requests.push(h);
    const mode = this.opts.behaviour?.(h);
    if (mode === 'hang') return;
    if (mode === 'crash') return sock.destroy();
    if (mode) return send({ id, op: 'error', ok: false, error: { code: mode, message: `fake ${mode}`, field: 'images[0]' } });
    const steps = h.steps as number;
    for (let s = 1; s <= steps; s++) {
      await new Promise((r) => setTimeout(r, this.opts.stepMs ?? 5));
      if (this.cancels.has(id as string)) return send({ id, op: 'error', ok: false, error: { code: 'CANCELED', message: 'canceled' } });
      if (h.progress) send({ id, op: 'progress', step: s, steps, step_ms: this.opts.stepMs ?? 5, elapsed_ms: s * 5 });
    }
    const ref = (h.images as { width?: number; height?: number }[])[0] ?? {};
    const width = (h.width as number | null) ?? ref.width ?? 64;
    const height = (h.height as number | null) ?? ref.height ?? 64;
    const fmt = h.output_format as 'jpeg' | 'png' | 'webp';
    const img = await sharp({ create: { width, height, channels: 3, background: { r: 200, g: 30, b: 90 } } }).toFormat(fmt).toBuffer();
    if (mode === undefined && h.prompt === 'no image data') {
      return send({ id, op: 'result', ok: true, images: [{ width, height, content_type: 'image/jpeg' }], seeds: [1], timings: {} });
    }
    void blobs;
    send({ id, op: 'result', ok: true, images: [{ width, height, content_type: `image/${fmt}` }], seeds: [h.seed ?? 7],
      timings: { queue_ms: 0.1, text_encode_ms: 1, vae_encode_ms: 1, denoise_ms: steps * 5, decode_ms: 1, image_encode_ms: 1, total_ms: steps * 5 + 4 },
      batch_size: 1 }, [img]);
  }
}

/** Engine seam backed by a FakeEngine over the real EngineClient, so unit tests exercise the wire code too. */
import { EventEmitter } from 'node:events';
import { EngineClient, type GenerateParams, type RequestOptions } from '../../src/engine/client.ts';
import type { Engine, EngineState, EngineStatus } from '../../src/engine/engine.ts';
import { DEFAULT_ENGINE_LIMITS } from '../../src/engine/limits.ts';

export class FakeEngineAdapter extends EventEmitter implements Engine {
  state: EngineState = 'stopped';
  limits = DEFAULT_ENGINE_LIMITS;
  client: EngineClient | null = null;

  constructor(readonly fake: FakeEngine) {
    super();
  }

  start(): void {
    this.state = 'starting';
    void this.fake
      .listen()
      .then(() => EngineClient.connect(this.fake.address))
      .then((c) => {
        this.client = c;
        this.setState('ready');
      });
  }

  setState(s: EngineState): void {
    this.state = s;
    this.emit('state', s);
  }

  async stop(): Promise<void> {
    this.client?.close();
    await this.fake.close();
    this.setState('stopped');
  }

  async waitReady(): Promise<void> {
    while (this.state !== 'ready') await new Promise((r) => setTimeout(r, 10));
  }

  async generate(params: GenerateParams, opts?: RequestOptions) {
    await this.waitReady();
    // Like the supervisor's restart: a dropped connection is replaced before the next request.
    if (this.client!.isClosed) this.client = await EngineClient.connect(this.fake.address);
    return this.client!.generate(params, { ...opts, idleDeadlineMs: 2000 });
  }

  status(): EngineStatus {
    return { status: this.state, ok: this.state === 'ready', pid: null, restarts: 0, model: 'fake', limits: this.limits, error: null };
  }

  metricsText(): Promise<string> {
    return this.client ? this.client.metrics() : Promise.resolve('');
  }
}
