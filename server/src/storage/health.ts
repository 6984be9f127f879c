// Whether storage can take writes right now. A cheap write probe per store runs on a timer, and every real
// write that fails marks its store down at once (the next good probe clears it), so /v1/health says
// "cannot store" while the disk is full instead of "ok". Failures are counted for Prometheus.
import type { Logger } from 'pino';
import { Counter } from 'prom-client';
import { StorageWriteError, type WriteFailureListener } from './write-failure.ts';

export interface StorageCheck {
  /** `objects` (inputs and outputs) or `runs` (the run database). */
  name: 'objects' | 'runs';
  /** Writes (and removes) something tiny; throws when the store refuses. */
  probe(): Promise<void>;
}

export interface StoreState {
  writable: boolean;
  /** Why the last write failed, while it is failing (the kind and code only: health is public). */
  error?: string;
  /** Epoch ms of the last probe or failure that set this state. */
  checked_at: number | null;
}

export class StorageHealth {
  /** prom-client counter; the role registers it with its metrics registry. */
  readonly failures = new Counter({
    name: 'kleinserve_storage_write_failures_total',
    help: 'Storage writes that failed, by store (objects, runs) and kind (full, failed)',
    labelNames: ['store', 'kind'],
    registers: [],
  });
  private readonly states = new Map<string, StoreState>();
  private checks: StorageCheck[] = [];
  private timer: NodeJS.Timeout | null = null;
  private probing: Promise<void> | null = null;

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = 5000,
  ) {
    for (const name of ['objects', 'runs']) this.states.set(name, { writable: true, checked_at: null });
  }

  /** Handed to the stores: called with every write they could not make. */
  readonly report: WriteFailureListener = (err: StorageWriteError) => {
    this.failures.inc({ store: err.store, kind: err.kind });
    const was = this.states.get(err.store);
    if (was?.writable !== false) this.logger.error({ store: err.store, what: err.what, err: err.message }, 'storage write failed');
    this.states.set(err.store, { writable: false, error: err.reason, checked_at: Date.now() });
  };

  start(checks: StorageCheck[]): void {
    this.checks = checks;
    void this.probe();
    if (this.intervalMs > 0) {
      this.timer = setInterval(() => void this.probe(), this.intervalMs);
      this.timer.unref();
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One probe of every store; concurrent callers share it. Never throws. */
  probe(): Promise<void> {
    this.probing ??= Promise.all(
      this.checks.map(async (c) => {
        try {
          await c.probe();
          const was = this.states.get(c.name);
          if (was && !was.writable) this.logger.warn({ store: c.name }, 'storage accepts writes again');
          this.states.set(c.name, { writable: true, checked_at: Date.now() });
        } catch (err) {
          // A store that reports its own failures has done so; count the others here.
          if (!(err instanceof StorageWriteError)) this.report(new StorageWriteError('write probe', c.name, err));
          else this.states.set(c.name, { writable: false, error: err.reason, checked_at: Date.now() });
        }
      }),
    ).then(
      () => {
        this.probing = null;
      },
      () => {
        this.probing = null;
      },
    );
    return this.probing;
  }

  get writable(): boolean {
    return [...this.states.values()].every((s) => s.writable);
  }

  snapshot(): { writable: boolean; objects: StoreState; runs: StoreState } {
    return { writable: this.writable, objects: { ...this.states.get('objects')! }, runs: { ...this.states.get('runs')! } };
  }
}
