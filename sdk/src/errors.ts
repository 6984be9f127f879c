export interface FieldError {
  field?: string;
  reason?: string;
  path?: string;
  message?: string;
  code?: string;
  [key: string]: unknown;
}

/** An error answered by the API: carries its HTTP status, the contract's `code` and per-field `errors[]`. */
export class KleinserveError extends Error {
  readonly status: number;
  readonly code: string;
  readonly errors: FieldError[];
  readonly body: unknown;
  /** Seconds the server asked us to wait (Retry-After), when it said. */
  retryAfter?: number;

  constructor(status: number, code: string, message: string, errors: FieldError[] = [], body?: unknown) {
    super(message);
    this.name = 'KleinserveError';
    this.status = status;
    this.code = code;
    this.errors = errors;
    this.body = body;
  }

  static async fromResponse(res: Response): Promise<KleinserveError> {
    const text = await res.text().catch(() => '');
    let body: any = undefined;
    try { body = JSON.parse(text); } catch { /* not JSON: keep the text as the message */ }
    const code = typeof body?.code === 'string' ? body.code : `HTTP_${res.status}`;
    const message = typeof body?.message === 'string' ? body.message : (text || res.statusText);
    const errors = Array.isArray(body?.errors) ? body.errors : [];
    const err = new KleinserveError(res.status, code, message, errors, body ?? text);
    const retryAfter = Number(res.headers.get('retry-after'));
    if (Number.isFinite(retryAfter) && retryAfter > 0) err.retryAfter = retryAfter;
    return err;
  }
}

/** Every base URL failed at the network level (or kept answering 5xx) until retries ran out. */
export class KleinserveConnectionError extends Error {
  readonly attempts: number;
  constructor(message: string, attempts: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KleinserveConnectionError';
    this.attempts = attempts;
  }
}

/** A run ended in `failed` or `canceled` where a caller asked for its result. */
export class RunFailedError extends Error {
  readonly run: import('./types.js').Run;
  readonly code: string;
  constructor(run: import('./types.js').Run) {
    const code = run.error?.code ?? run.failure_code ?? (run.status_code === 'canceled' ? 'CANCELED' : 'RUN_FAILED');
    super(`run ${run.id} ${run.status_code}: ${run.error?.message ?? run.failure_message ?? code}`);
    this.name = 'RunFailedError';
    this.run = run;
    this.code = code;
  }
}
