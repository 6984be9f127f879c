// The worker role's side of cluster mode: BullMQ delivers run ids from the region's queue of the worker's model
// (one queue per model, so only engines that serve a run's model see it); Postgres decides who
// runs them. For each job: claim the run with a lease (conditional UPDATE + fresh token), hand it to the
// same LocalDispatcher the embedded role uses (preprocess -> engine -> outputs -> lifecycle), renew the
// lease while it runs, and return once the run is terminal. Every lifecycle write is fenced by the token,
// so a worker that lost its lease (it stalled and another took over) loses cleanly and never completes twice.
import { randomUUID } from 'node:crypto';
import { Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { RunEventBus } from '../runs/events.ts';
import { RunLifecycle } from '../runs/lifecycle.ts';
import type { PostgresStore } from '../runs/postgres-store.ts';
import type { RunStore } from '../runs/store.ts';
import { isTerminal, type RunRecord } from '../runs/types.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import { DEFAULT_MODEL, modelOfRun } from '../models/registry.ts';
import { queueName, type RunJobData } from './bullmq-queue.ts';
import { LocalDispatcher, type DispatcherDeps } from './local-dispatcher.ts';

/** What the worker hands its LocalDispatcher, plus what it needs to consume its queue and fence its writes. */
export interface RegionConsumerOptions extends Pick<DispatcherDeps, 'engine' | 'objects' | 'preprocess' | 'logger' | 'metrics' | 'concurrency'> {
  id: string;
  region: string;
  /** The public id of the model this worker's engine serves: it consumes that model's queue only. */
  model?: string;
  store: PostgresStore;
  connection: Redis;
  maxAttempts: number;
  /** Our hold on a claimed run in Postgres; renewed every third of it. Matches BullMQ's lockDuration. */
  leaseMs: number;
  stalledIntervalMs: number;
  callbackBody?: (run: RunRecord) => { event: string; body: string };
}

type Outcome = 'done' | 'requeued' | 'lost';

export class RegionConsumer {
  readonly bus = new RunEventBus();
  private readonly tokens = new Map<string, string>();
  private readonly inbox: RunRecord[] = [];
  private readonly lifecycle: RunLifecycle;
  readonly dispatcher: LocalDispatcher;
  private worker: Worker<RunJobData> | null = null;
  private stopping = false;

  constructor(private readonly o: RegionConsumerOptions) {
    this.lifecycle = new RunLifecycle(this.fencedStore(), this.bus, {
      maxAttempts: o.maxAttempts,
      logger: o.logger,
      callbackBody: o.callbackBody,
    });
    this.dispatcher = new LocalDispatcher({
      lifecycle: this.lifecycle,
      engine: o.engine,
      objects: this.outputGuard(o.objects),
      preprocess: o.preprocess,
      logger: o.logger,
      metrics: o.metrics,
      concurrency: o.concurrency,
    });
  }

  get model(): string {
    return this.o.model ?? DEFAULT_MODEL;
  }

  get active(): number {
    return this.tokens.size;
  }

  async start(): Promise<void> {
    // Only cancels need to reach us from other processes; everything else this worker writes itself.
    await this.o.store.listen(
      (id) => {
        if (!this.tokens.has(id)) return;
        void this.o.store.get(id).then((run) => run?.status === 'canceled' && this.bus.publish({ type: 'status', run }));
      },
      (err) => this.o.logger.warn({ err }, 'postgres listener dropped; reconnecting'),
    );
    this.dispatcher.start();
    this.worker = new Worker<RunJobData>(queueName(this.model), (job) => this.process(job), {
      connection: this.o.connection,
      concurrency: this.o.concurrency,
      lockDuration: this.o.leaseMs,
      stalledInterval: this.o.stalledIntervalMs,
      // Postgres attempts bound retries (WORKER_LOST); BullMQ must keep handing a stalled job back.
      maxStalledCount: 1000,
      autorun: true,
    });
    this.worker.on('error', (err) => this.o.logger.warn({ err: err.message }, 'bullmq worker error'));
  }

  /** Stop taking jobs, let in-flight runs finish for graceMs, release the rest to the queue (the api re-enqueues them). */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    const closing = this.worker?.close();
    await this.dispatcher.stop(graceMs);
    for (let run = this.inbox.shift(); run; run = this.inbox.shift()) await this.lifecycle.release(run);
    await Promise.race([closing, new Promise((r) => setTimeout(r, 3000))]);
  }

  private async process(job: Job<RunJobData>): Promise<string> {
    const id = job.data.runId;
    const log = this.o.logger.child({ run_id: id });
    for (let spins = 0; !this.stopping; spins++) {
      const run = await this.o.store.get(id);
      if (!run || isTerminal(run.status)) return 'skipped: terminal or unknown';
      if (run.region !== this.o.region) return `skipped: run now belongs to ${run.region}`;
      // Never run another model's job (the sweeper enqueues the run again on its own model's queue).
      if (modelOfRun(run.model_id) !== this.model) return `skipped: run is for ${modelOfRun(run.model_id)}, this worker serves ${this.model}`;
      if (run.status !== 'queued' && (run.lease_until ?? 0) >= Date.now()) {
        // Another holder's lease is still live (BullMQ's lock and our lease expire close together): wait it out.
        await sleep(Math.min(1000, (run.lease_until ?? 0) - Date.now() + 20));
        continue;
      }
      const token = randomUUID();
      const claimed = await this.o.store.claimForWorker(id, this.o.region, this.o.id, token, this.o.leaseMs);
      if (!claimed) {
        await sleep(Math.min(50 * (spins + 1), 500));
        continue;
      }
      this.tokens.set(id, token);
      try {
        if (claimed.attempts >= this.o.maxAttempts) {
          await this.lifecycle.fail(
            claimed,
            'WORKER_LOST',
            `the run's worker was lost ${claimed.attempts} times; gave up after ${claimed.attempts} attempts`,
            'dispatch',
          );
          return 'failed: attempts exhausted';
        }
        if (claimed.attempts > 0) log.warn({ attempts: claimed.attempts }, 'took over a run from a lost worker');
        const outcome = await this.runLocally(claimed, token);
        if (outcome !== 'requeued') return outcome;
      } finally {
        this.tokens.delete(id);
      }
    }
    return 'released: worker stopping';
  }

  /** Feeds the claimed run to the dispatcher and waits for it to end here, holding the lease meanwhile. */
  private runLocally(run: RunRecord, token: string): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      let settled = false;
      const finish = (o: Outcome) => {
        if (settled) return;
        settled = true;
        clearInterval(renew);
        unsubscribe();
        resolve(o);
      };
      const unsubscribe = this.bus.subscribe(run.id, (ev) => {
        if (ev.type !== 'status') return;
        if (isTerminal(ev.run.status)) finish('done');
        else if (ev.run.status === 'queued') finish('requeued');
      });
      const renew = setInterval(() => {
        this.o.store.renewLease(run.id, token, this.o.leaseMs).then(
          (held) => {
            if (held || settled) return;
            this.o.logger.warn({ run_id: run.id }, 'lost the lease on a run; abandoning it');
            // The dispatcher aborts engine work on a canceled event; our fenced writes would lose anyway.
            this.bus.publish({ type: 'status', run: { ...run, status: 'canceled' } });
            finish('lost');
          },
          (err) => this.o.logger.warn({ err, run_id: run.id }, 'lease renewal failed'),
        );
      }, Math.max(100, Math.floor(this.o.leaseMs / 3)));
      this.inbox.push(run);
      this.dispatcher.pump();
    });
  }

  /** The lifecycle's store: claims come from the inbox, transitions are fenced by our lease tokens. */
  private fencedStore(): RunStore {
    const s = this.o.store;
    return {
      insert: (run) => s.insert(run),
      get: (id) => s.get(id),
      list: (q) => s.list(q),
      transition: async (id, from, patch, delivery) => {
        const out = await s.transitionGuarded(id, from, patch, delivery, this.tokens.get(id) ?? '\0none');
        if (patch.status === 'succeeded') await s.recordExecution(id, this.o.id, this.o.region, out !== null);
        return out;
      },
      claimNext: async () => this.inbox.shift() ?? null,
      listInFlight: async () => [],
      // Another worker may serve the models this one does not; the api's sweeper decides when a run waited too long.
      listQueuedExcept: async () => [],
      countByStatus: () => s.countByStatus(),
      close: async () => {},
    };
  }

  /**
   * Output keys are fixed per run, so two attempts write the same key. A losing attempt must not delete
   * what the winner published: only a run that ended without success may have its files removed.
   */
  private outputGuard(objects: ObjectStore): ObjectStore {
    const store = this.o.store;
    return Object.assign(Object.create(objects) as ObjectStore, {
      delete: async (key: string) => {
        const runId = /^outputs\/([^/]+)\//.exec(key)?.[1];
        const run = runId ? await store.get(runId) : null;
        if (run && (run.status === 'canceled' || run.status === 'failed')) await objects.delete(key);
      },
    });
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
