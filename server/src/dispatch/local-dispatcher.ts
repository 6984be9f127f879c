// Feeds queued runs to the local engine, at most `concurrency` at a time so the engine's batcher sees
// concurrent requests. Each run: preprocess -> engine -> store output -> succeed, with every outcome going
// through the lifecycle. Engine crashes and hangs requeue the run (bounded by the lifecycle's attempts).
import type { Logger } from 'pino';
import type { DecodedImage } from '../images/index.ts';
import { EngineConnectionError, EngineDeadlineError, EngineError, type GenerateResult } from '../engine/client.ts';
import { ModelUnavailableError, type Engine } from '../engine/engine.ts';
import type { Metrics } from '../metrics.ts';
import type { RunLifecycle } from '../runs/lifecycle.ts';
import { isTerminal, type RunRecord, type RunTiming, type StoredOutputImage } from '../runs/types.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { StorageWriteError } from '../storage/write-failure.ts';
import { prepareImages, prepareLoras, PreprocessFailure, type PreprocessDeps } from './preprocess.ts';

export interface DispatcherDeps {
  lifecycle: RunLifecycle;
  engine: Engine;
  objects: ObjectStore;
  preprocess: PreprocessDeps;
  logger: Logger;
  metrics?: Metrics;
  concurrency: number;
  /** The run model_ids this engine serves (registry.runModelIds); absent: every run is its. */
  models?: string[];
}

const EXT: Record<string, string> = { 'image/jpeg': 'jpg', 'image/png': 'png', 'image/webp': 'webp' };

export class LocalDispatcher {
  private active = new Map<string, AbortController>();
  private decodedCache = new Map<string, Map<number, DecodedImage>>();
  private pumping = false;
  private again = false;
  private stopping = false;
  private unsubscribe?: () => void;
  private readonly onEngineState = () => this.pump();

  constructor(private readonly deps: DispatcherDeps) {}

  start(): void {
    const { lifecycle, engine } = this.deps;
    this.unsubscribe = lifecycle.bus.subscribe('*', (ev) => {
      if (ev.type !== 'status') return;
      if (ev.run.status === 'queued') this.pump();
      if (ev.run.status === 'canceled') this.active.get(ev.run.id)?.abort();
      // A run that ends without being processed here (canceled or failed while queued) drops its images too.
      if (isTerminal(ev.run.status)) this.decodedCache.delete(ev.run.id);
    });
    engine.on('state', this.onEngineState);
    this.pump();
  }

  /**
   * Inline images decoded during the POST, held before the run is stored (once stored it is claimable);
   * used once, dropped when the run is processed or ends, or by `drop` when it was never created.
   */
  hold(runId: string, decoded: Map<number, DecodedImage>): void {
    if (decoded.size) this.decodedCache.set(runId, decoded);
  }

  drop(runId: string): void {
    this.decodedCache.delete(runId);
  }

  /** Runs whose decoded images are held (for tests and leak checks). */
  get held(): number {
    return this.decodedCache.size;
  }

  get inFlight(): number {
    return this.active.size;
  }

  /** Stop claiming; let in-flight runs finish for up to graceMs, then put the rest back in the queue. */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    this.unsubscribe?.();
    this.deps.engine.off('state', this.onEngineState);
    const deadline = Date.now() + graceMs;
    while (this.active.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const [id, ac] of this.active) {
      ac.abort('shutdown');
      const run = await this.deps.lifecycle.store.get(id);
      if (run) await this.deps.lifecycle.release(run);
    }
  }

  pump(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    this.fill()
      .catch((err) => {
        this.deps.logger.error({ err }, 'dispatch loop failed');
        // Nothing else may wake the loop (a claim refused by a full disk leaves the run queued): try again.
        if (!this.stopping) setTimeout(() => this.pump(), 1000).unref();
      })
      .finally(() => {
        this.pumping = false;
        if (this.again) {
          this.again = false;
          this.pump();
        }
      });
  }

  private async fill(): Promise<void> {
    const { engine, lifecycle } = this.deps;
    if (engine.state === 'unavailable') return this.failAllQueued();
    while (!this.stopping && engine.state === 'ready' && this.active.size < this.deps.concurrency) {
      const run = await lifecycle.claimNext(this.deps.models);
      if (!run) return;
      const ac = new AbortController();
      this.active.set(run.id, ac);
      this.process(run, ac)
        .catch((err) => this.failUnexpectedly(run, err))
        .finally(() => {
          this.active.delete(run.id);
          this.decodedCache.delete(run.id);
          this.pump();
        });
    }
  }

  private async failAllQueued(): Promise<void> {
    const { lifecycle, engine } = this.deps;
    for (let run = await lifecycle.claimNext(this.deps.models); run; run = await lifecycle.claimNext(this.deps.models)) {
      await lifecycle.fail(run, 'MODEL_UNAVAILABLE', `the model cannot be loaded: ${engine.status().error}`, 'dispatch');
    }
  }

  private async process(claimed: RunRecord, ac: AbortController): Promise<void> {
    const { lifecycle, engine, metrics } = this.deps;
    const log = this.deps.logger.child({ run_id: claimed.id });
    const timing: RunTiming = { queue_ms: Date.now() - claimed.created_at };
    metrics?.stage.observe({ stage: 'queue' }, timing.queue_ms! / 1000);

    let t = performance.now();
    let images;
    let loras;
    try {
      [images, loras] = await Promise.all([
        prepareImages(this.deps.preprocess, claimed, this.decodedCache.get(claimed.id)),
        prepareLoras(this.deps.preprocess, claimed),
      ]);
    } catch (err) {
      if (!(err instanceof PreprocessFailure)) throw err;
      await lifecycle.fail(claimed, err.code, err.message, 'preprocess');
      return;
    }
    timing.preprocess_ms = round(performance.now() - t);
    metrics?.stage.observe({ stage: 'preprocess' }, timing.preprocess_ms / 1000);

    const running = await lifecycle.markRunning(claimed);
    if (!running) return; // canceled while preprocessing
    log.debug('run dispatched to engine');

    t = performance.now();
    let result: GenerateResult;
    try {
      const { input } = running;
      result = await engine.generate(
        {
          prompt: input.prompt,
          images,
          seed: input.seed,
          steps: input.steps,
          width: input.width,
          height: input.height,
          num_images: input.num_images,
          output_format: input.output_format,
          output_quality: input.output_quality,
          // A distilled checkpoint has no guidance pass: its guidance_scale is documented as ignored, not sent.
          guidance_scale: engine.status().model_info?.supports_guidance === false ? undefined : input.guidance_scale,
          negative_prompt: input.negative_prompt,
          safety_checker: input.safety_checker,
          ...(loras.length ? { loras } : {}),
          ...(input.deterministic ? { deterministic: true } : {}),
        },
        {
          signal: ac.signal,
          onProgress: (p) => lifecycle.bus.publish({ type: 'progress', run_id: running.id, ...pick(p) }),
        },
      );
    } catch (err) {
      await this.onEngineFailure(running, err, ac);
      return;
    }
    // Seen from here: engine total_ms plus the socket transfer both ways and the engine's framing.
    timing.engine_rtt_ms = round(performance.now() - t);
    metrics?.stage.observe({ stage: 'engine' }, timing.engine_rtt_ms / 1000);

    t = performance.now();
    if (result.images.length === 0 || result.images.some((img) => !img.bytes?.length)) {
      await lifecycle.fail(running, 'ENGINE_ERROR', 'the engine answered without image data', 'inference');
      return;
    }
    let stored: StoredOutputImage[];
    try {
      stored = await this.storeOutputs(running, result);
    } catch (err) {
      // Named without its key: the key holds the output's access token.
      const failure = err instanceof StorageWriteError ? err.renamed('the output image') : err;
      const code = failure instanceof StorageWriteError && failure.kind === 'full' ? 'STORAGE_FULL' : 'STORAGE_FAILED';
      await lifecycle.fail(running, code, (failure as Error).message, 'postprocess');
      await Promise.allSettled(result.images.map((_, i) => this.deps.objects.delete(outputKey(running, result.images[i].content_type, i))));
      return;
    }
    const engineTimings = Object.fromEntries(
      Object.entries(result.timings).map(([k, v]) => [k === 'queue_ms' ? 'engine_queue_ms' : k === 'total_ms' ? 'engine_total_ms' : k, v]),
    );
    timing.store_ms = round(performance.now() - t);
    const done = await lifecycle.succeed(running, {
      images: stored,
      seed: result.seeds[0] ?? running.input.seed,
      timing: { ...timing, ...engineTimings, total_ms: Date.now() - running.created_at },
    });
    if (!done) {
      // Canceled (or otherwise finished) while the engine worked: the result loses, leave no orphan files.
      await Promise.all(stored.map((s) => this.deps.objects.delete(s.key)));
      return;
    }
    log.info({ timing: done.output?.timing }, 'run succeeded');
  }

  /** Anything unforeseen (a lost input file, a full disk) ends the run as failed rather than stranding it. */
  private async failUnexpectedly(run: RunRecord, err: unknown): Promise<void> {
    this.deps.logger.error({ err, run_id: run.id }, 'run processing failed unexpectedly');
    const latest = (await this.deps.lifecycle.store.get(run.id).catch(() => null)) ?? run;
    const message = `internal error: ${(err as Error)?.message ?? String(err)}`;
    await this.deps.lifecycle.fail(latest, 'INTERNAL', message, 'dispatch').catch(() => {});
  }

  private async storeOutputs(run: RunRecord, result: GenerateResult): Promise<StoredOutputImage[]> {
    return Promise.all(
      result.images.map(async (img, i) => {
        const key = outputKey(run, img.content_type, i);
        await this.deps.objects.put(key, img.bytes);
        return { key, content_type: img.content_type, width: img.width, height: img.height, ...(img.nsfw ? { nsfw: true } : {}) };
      }),
    );
  }

  private async onEngineFailure(run: RunRecord, err: unknown, ac: AbortController): Promise<void> {
    const { lifecycle } = this.deps;
    if (ac.signal.aborted && ac.signal.reason === 'shutdown') return; // stop() releases it
    if (err instanceof EngineError) {
      switch (err.code) {
        case 'CANCELED':
          if (ac.signal.aborted) return; // our cancel; the run is already canceled
          await lifecycle.retry(run, 'ENGINE_CANCELED', 'the engine canceled the request');
          return;
        case 'INVALID_REQUEST': {
          // A late refusal (what intake could not know): the run fails naming the request's field and the reason.
          const field = requestField(err.field);
          const detail = err.message.replace(/^[\w.[\]]+: /, '');
          await lifecycle.fail(run, 'INPUT_VALIDATION_FAILED', `${field}: ${err.reason ? `${err.reason}: ` : ''}${detail}`, 'inference');
          return;
        }
        case 'NSFW_CONTENT':
          await lifecycle.fail(run, 'NSFW_CONTENT', `the safety checker flagged an output (policy fail): ${err.message}`, 'inference');
          return;
        case 'NOT_READY':
          await lifecycle.retry(run, 'ENGINE_NOT_READY', 'the engine was not ready');
          return;
        default:
          await lifecycle.fail(run, err.code === 'OUT_OF_MEMORY' ? 'OUT_OF_MEMORY' : 'ENGINE_ERROR', err.message, 'inference');
          return;
      }
    }
    if (err instanceof ModelUnavailableError) {
      await lifecycle.fail(run, 'MODEL_UNAVAILABLE', `the model cannot be loaded: ${err.message}`, 'dispatch');
    } else if (err instanceof EngineDeadlineError) {
      await lifecycle.retry(run, 'ENGINE_TIMEOUT', `the engine hung: ${err.message}`);
    } else if (err instanceof EngineConnectionError) {
      await lifecycle.retry(run, 'ENGINE_CRASHED', `the engine died during the run: ${err.message}`);
    } else if (ac.signal.aborted) {
      return; // canceled while waiting for the engine to become ready
    } else {
      throw err;
    }
  }
}

/** The engine's field name as the request's (Runflow's wire names). */
function requestField(field: string | undefined): string {
  if (!field) return 'input';
  if (field === 'safety_checker') return 'input.enable_safety_checker';
  return `input.${field.replace(/^images\[(\d+)\]/, 'image_urls[$1]')}`;
}

/** Deterministic per run: a retried run overwrites its own file instead of leaving a second one. */
function outputKey(run: RunRecord, contentType: string, i: number): string {
  return `outputs/${run.id}/${run.output_token}${i ? `-${i}` : ''}.${EXT[contentType] ?? 'bin'}`;
}

const round = (ms: number) => Math.round(ms * 100) / 100;
const pick = (p: { step: number; steps: number; step_ms?: number; elapsed_ms?: number }) => ({
  step: p.step,
  steps: p.steps,
  step_ms: p.step_ms,
  elapsed_ms: p.elapsed_ms,
});
