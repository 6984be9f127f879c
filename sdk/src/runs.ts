import { KleinserveError, RunFailedError } from './errors.js';
import { parseSse } from './sse.js';
import type { Transport } from './transport.js';
import { isTerminal, type CreateRunParams, type Run, type RunEvent } from './types.js';

export const EDIT_MODEL_PATH = '/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs';
export const TEXT_TO_IMAGE_MODEL_PATH = '/v1/models/black-forest-labs/flux-2-klein-4b/runs';

export interface CreateOptions {
  /** Ask the server to hold the request until the run is terminal (`Prefer: wait=N`, seconds). */
  waitSeconds?: number;
  signal?: AbortSignal;
  /**
   * The `Idempotency-Key` header: a repeat with the same key and body returns the first run, a different body
   * is a 409. A random key is made per call when absent; pass your own to deduplicate across processes.
   */
  idempotencyKey?: string;
}

export interface WaitOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
  onEvent?: (event: RunEvent) => void;
}

function newIdempotencyKey(): string {
  return `sdk_${globalThis.crypto.randomUUID()}`;
}

export class Runs {
  constructor(private readonly t: Transport, private readonly pollIntervalMs: number) {}

  /**
   * Creates a run. One Idempotency-Key per call goes with every retry of it, so a retry after a lost answer
   * finds the first run instead of creating a second one. `client_ref` is the caller's own reference and is
   * sent as given: it never deduplicates (two creates with the same `client_ref` are two runs).
   */
  async create(params: CreateRunParams, opts: CreateOptions = {}): Promise<Run> {
    const { model, ...body } = params;
    const headers: Record<string, string> = { 'idempotency-key': opts.idempotencyKey ?? newIdempotencyKey() };
    if (opts.waitSeconds !== undefined) headers.prefer = `wait=${Math.max(1, Math.round(opts.waitSeconds))}`;
    const path = model === 'text-to-image' ? TEXT_TO_IMAGE_MODEL_PATH : EDIT_MODEL_PATH;
    return this.t.json<Run>(path, { method: 'POST', body, headers, signal: opts.signal });
  }

  get(id: string, opts: { signal?: AbortSignal } = {}): Promise<Run> {
    return this.t.json<Run>(`/v1/runs/${encodeURIComponent(id)}`, { signal: opts.signal });
  }

  /** Cancels a queued or running run; a run that already ended is returned as it is. */
  cancel(id: string): Promise<Run> {
    return this.t.json<Run>(`/v1/admin/runs/${encodeURIComponent(id)}/cancellation`, { method: 'POST' });
  }

  /**
   * Live events of one run (status changes, engine steps n/N with timings, then the terminal run).
   * Reconnects if the stream drops before the end; the iterator finishes after the `run` event.
   */
  async *stream(id: string, opts: { signal?: AbortSignal } = {}): AsyncGenerator<RunEvent> {
    for (let reconnects = 0; ; reconnects++) {
      const res = await this.t.request(`/v1/runs/${encodeURIComponent(id)}/events`, {
        headers: { accept: 'text/event-stream' },
        stream: true,
        signal: opts.signal,
      });
      if (!res.body) throw new KleinserveError(502, 'BAD_STREAM', 'event stream has no body');
      for await (const msg of parseSse(res.body)) {
        const data = JSON.parse(msg.data);
        if (msg.event === 'run') {
          yield { type: 'run', run: data as Run };
          return;
        }
        if (msg.event === 'status' || msg.event === 'progress') yield { type: msg.event, ...data } as RunEvent;
      }
      // The stream ended without a terminal event (proxy timeout, server restart): check, then resume.
      const run = await this.get(id, opts);
      if (isTerminal(run.status_code)) {
        yield { type: 'run', run };
        return;
      }
      if (reconnects >= 20) throw new KleinserveError(502, 'STREAM_ENDED', `event stream for run ${id} kept ending early`);
    }
  }

  /** Resolves with the terminal run: follows the event stream, and polls when the stream is unavailable. */
  async wait(id: string, opts: WaitOptions = {}): Promise<Run> {
    const ctrl = new AbortController();
    const onAbort = () => ctrl.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = opts.timeoutMs
      ? setTimeout(() => ctrl.abort(new Error(`run ${id} not finished after ${opts.timeoutMs} ms`)), opts.timeoutMs)
      : undefined;
    try {
      try {
        for await (const ev of this.stream(id, { signal: ctrl.signal })) {
          opts.onEvent?.(ev);
          if (ev.type === 'run') return ev.run;
        }
      } catch (e) {
        if (ctrl.signal.aborted) throw ctrl.signal.reason;
        if (e instanceof KleinserveError && e.status !== 404 && e.status !== 405) throw e;
        if (e instanceof KleinserveError && e.code === 'RUN_NOT_FOUND') throw e;
      }
      return await this.poll(id, ctrl.signal, opts.onEvent);
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  private async poll(id: string, signal: AbortSignal, onEvent?: (e: RunEvent) => void): Promise<Run> {
    let last: string | undefined;
    for (;;) {
      const run = await this.get(id, { signal });
      if (run.status_code !== last) onEvent?.({ type: 'status', run_id: id, status: run.status_code });
      last = run.status_code;
      if (isTerminal(run.status_code)) return run;
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, this.pollIntervalMs);
        signal.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }, { once: true });
      });
    }
  }

  /** Waits and throws RunFailedError unless the run succeeded. */
  async result(id: string, opts: WaitOptions = {}): Promise<Run> {
    const run = await this.wait(id, opts);
    if (run.status_code !== 'succeeded') throw new RunFailedError(run);
    return run;
  }
}
