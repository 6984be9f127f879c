import { KleinserveConnectionError, KleinserveError } from './errors.js';
import type { ClientOptions, FetchLike } from './types.js';

export interface RequestOptions {
  method?: string;
  body?: unknown;
  headers?: Record<string, string>;
  /** Expected to stay open (SSE): no per-attempt timeout once headers arrived. */
  stream?: boolean;
  signal?: AbortSignal;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }, { once: true });
  });

/** Retryable statuses: the server (or a region) is unhealthy or asks us to slow down. */
function retryable(status: number): boolean {
  return status >= 500 || status === 429;
}

/**
 * Sends requests to the first healthy base URL, in the caller's order of preference.
 * Network errors and 5xx move on to the next URL with exponential backoff; a URL that failed is
 * skipped by later requests until it has cooled down, so one dead region costs one timeout, not one per call.
 */
export class Transport {
  readonly baseUrls: string[];
  private readonly apiKey?: string;
  private readonly maxRetries: number;
  private readonly retryDelayMs: number;
  private readonly timeoutMs: number;
  private readonly fetchImpl: FetchLike;
  private readonly downUntil = new Map<string, number>();

  constructor(opts: ClientOptions) {
    const urls = Array.isArray(opts.baseUrl) ? opts.baseUrl : [opts.baseUrl ?? envBaseUrl() ?? 'http://127.0.0.1:8080'];
    if (urls.length === 0) throw new TypeError('baseUrl: give at least one URL');
    this.baseUrls = urls.map((u) => u.replace(/\/+$/, ''));
    this.apiKey = opts.apiKey ?? envApiKey();
    this.maxRetries = opts.maxRetries ?? 4;
    this.retryDelayMs = opts.retryDelayMs ?? 250;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.fetchImpl = opts.fetch ?? ((input, init) => fetch(input, init));
  }

  /** Order of URLs to try for the next request: healthy ones first, in preference order. */
  private candidates(): string[] {
    const now = Date.now();
    const up = this.baseUrls.filter((u) => (this.downUntil.get(u) ?? 0) <= now);
    const down = this.baseUrls.filter((u) => (this.downUntil.get(u) ?? 0) > now);
    return [...up, ...down];
  }

  isOwnUrl(url: string): boolean {
    return this.baseUrls.some((b) => url.startsWith(b + '/'));
  }

  authHeaders(): Record<string, string> {
    return this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {};
  }

  /** Performs the request and returns the raw Response (2xx only); API errors throw KleinserveError. */
  async request(path: string, opts: RequestOptions = {}): Promise<Response> {
    const order = this.candidates();
    let lastError: unknown;
    for (let attempt = 0; attempt < this.maxRetries; attempt++) {
      const base = order[attempt % order.length];
      if (attempt > 0) await sleep(this.backoff(attempt, lastError), opts.signal);
      try {
        const res = await this.once(base, path, opts);
        if (res.ok) {
          this.downUntil.delete(base);
          return res;
        }
        const err = await KleinserveError.fromResponse(res);
        if (!retryable(res.status)) throw err;
        lastError = err;
        if (res.status >= 500) this.markDown(base);
      } catch (e) {
        if (e instanceof KleinserveError && !retryable(e.status)) throw e;
        if (opts.signal?.aborted) throw e;
        lastError = e;
        if (!(e instanceof KleinserveError)) this.markDown(base);
      }
    }
    if (lastError instanceof KleinserveError) throw lastError;
    throw new KleinserveConnectionError(
      `no kleinserve server answered after ${this.maxRetries} attempts (${this.baseUrls.join(', ')}): ${describe(lastError)}`,
      this.maxRetries,
      { cause: lastError },
    );
  }

  async json<T>(path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.request(path, opts);
    return (await res.json()) as T;
  }

  private backoff(attempt: number, lastError: unknown): number {
    // Honour Retry-After (429/503), capped so one answer cannot stall a caller for minutes.
    if (lastError instanceof KleinserveError && lastError.retryAfter) return Math.min(lastError.retryAfter, 30) * 1000;
    const base = this.retryDelayMs * 2 ** (attempt - 1);
    return base / 2 + Math.random() * (base / 2);
  }

  private markDown(base: string) {
    if (this.baseUrls.length > 1) this.downUntil.set(base, Date.now() + 30_000);
  }

  private async once(base: string, path: string, opts: RequestOptions): Promise<Response> {
    const ctrl = new AbortController();
    const onAbort = () => ctrl.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => ctrl.abort(new Error(`timed out after ${this.timeoutMs} ms`)), this.timeoutMs);
    try {
      const headers: Record<string, string> = { accept: 'application/json', ...this.authHeaders(), ...opts.headers };
      let body: BodyInit | undefined;
      if (opts.body !== undefined) {
        headers['content-type'] = 'application/json';
        body = JSON.stringify(opts.body);
      }
      const res = await this.fetchImpl(base + path, { method: opts.method ?? 'GET', headers, body, signal: ctrl.signal });
      return res;
    } finally {
      // A stream keeps its own lifetime once the headers are in; only the connect phase is timed.
      clearTimeout(timer);
      if (!opts.stream) opts.signal?.removeEventListener('abort', onAbort);
    }
  }
}

function describe(e: unknown): string {
  if (e instanceof Error) return e.cause instanceof Error ? `${e.message} (${e.cause.message})` : e.message;
  return String(e);
}

function env(name: string): string | undefined {
  return typeof process !== 'undefined' ? process.env?.[name] : undefined;
}
function envBaseUrl() { return env('KLEINSERVE_BASE_URL'); }
function envApiKey() { return env('KLEINSERVE_API_KEY'); }
