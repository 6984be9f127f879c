// Cluster run store: Postgres is the source of truth for every run; BullMQ only delivers run ids. The same
// RunStore seam as SQLite, so the one RunLifecycle drives both. Cluster additions (regions, worker leases,
// moves) are extra methods used by the api and worker roles only.
import pg from 'pg';
import { MIGRATIONS } from './postgres-migrations.ts';
import type { Delivery, DeliveryStore, ListQuery, NewDelivery, RunStore } from './store.ts';
import { RUN_STATUSES, type RunPatch, type RunRecord, type RunStatus } from './types.ts';
import { asStorageWriteError, StorageWriteError, type WriteFailureListener } from '../storage/write-failure.ts';

const JSON_COLUMNS = new Set(['input', 'output', 'metadata', 'callback']);
const PATCHABLE = [
  'status', 'output', 'metadata', 'client_ref', 'callback_url', 'started_at', 'completed_at',
  'failure_code', 'failure_message', 'failure_stage_code', 'attempts',
] as const;
const COLUMNS = [
  'id', 'status', 'model_id', 'input', 'output', 'metadata', 'client_ref', 'callback_url', 'created_at',
  'started_at', 'completed_at', 'failure_code', 'failure_message', 'failure_stage_code', 'attempts', 'output_token',
  'callback',
];
/** A delivery a replica picked stays invisible to the others for this long (its attempt has a timeout far below). */
const DELIVERY_CLAIM_MS = 60_000;

/** BIGINT columns hold epoch ms, well inside JS's safe integers. */
const TYPES = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

type Row = Record<string, unknown>;

export interface ClusterRun extends RunRecord {
  region: string | null;
  queued_at: number | null;
  lease_token: string | null;
  lease_until: number | null;
  worker: string | null;
  moves: number;
}

function toRecord(row: Row): ClusterRun {
  return row as unknown as ClusterRun;
}

function toColumn(key: string, value: unknown): unknown {
  if (value === undefined) return null;
  return JSON_COLUMNS.has(key) && value !== null ? JSON.stringify(value) : value;
}

export interface PostgresStoreOptions {
  max?: number;
  onWriteFailure?: WriteFailureListener;
}

export class PostgresStore implements RunStore, DeliveryStore {
  readonly pool: pg.Pool;
  private listener: pg.Client | null = null;

  private constructor(
    readonly url: string,
    private readonly opts: PostgresStoreOptions,
  ) {
    this.pool = new pg.Pool({ connectionString: url, max: opts.max ?? 10, types: TYPES });
    // An idle client dropping (Postgres restart) must not crash the process; the next query reconnects.
    this.pool.on('error', () => {});
  }

  static async open(url: string, opts: PostgresStoreOptions = {}): Promise<PostgresStore> {
    const store = new PostgresStore(url, opts);
    await store.migrate();
    return store;
  }

  private async migrate(): Promise<void> {
    const c = await this.pool.connect();
    try {
      await c.query('SELECT pg_advisory_lock(4242017)');
      await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
      const { rows } = await c.query('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations');
      for (let v = rows[0].v as number; v < MIGRATIONS.length; v++) {
        await c.query('BEGIN');
        await c.query(MIGRATIONS[v]);
        await c.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [v + 1, Date.now()]);
        await c.query('COMMIT');
      }
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      await c.query('SELECT pg_advisory_unlock(4242017)').catch(() => {});
      c.release();
    }
  }

  async insert(run: RunRecord): Promise<void> {
    const values = COLUMNS.map((c) => toColumn(c, (run as unknown as Row)[c]));
    // Admission wrote the region on the run (cluster/region-admission.ts); null parks it for the sweeper.
    const region = run.region ?? null;
    await this.write('run record', () =>
      this.pool.query(
        `INSERT INTO runs (${COLUMNS.join(',')}, region) VALUES (${COLUMNS.map((_, i) => `$${i + 1}`).join(',')}, $${COLUMNS.length + 1})`,
        [...values, region],
      ),
    );
  }

  /** Runs a write; a full, read-only or unreachable database becomes a StorageWriteError naming `what`. */
  private async write<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const failure = asStorageWriteError(what, 'runs', err);
      if (failure instanceof StorageWriteError) this.opts.onWriteFailure?.(failure);
      throw failure;
    }
  }

  async get(id: string): Promise<ClusterRun | null> {
    const { rows } = await this.pool.query('SELECT * FROM runs WHERE id = $1', [id]);
    return rows[0] ? toRecord(rows[0]) : null;
  }

  async list(q: ListQuery): Promise<RunRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (q.cursor) {
      params.push(q.cursor);
      where.push(`id < $${params.length}`);
    }
    if (q.before) {
      params.push(q.before);
      where.push(`id > $${params.length}`);
    }
    if (q.status?.length) {
      params.push(q.status);
      where.push(`status = ANY($${params.length})`);
    }
    params.push(q.limit);
    // A previous page is the nearest newer runs: read upwards, answer newest first.
    const order = q.before ? 'ASC' : 'DESC';
    const sql = `SELECT * FROM runs ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id ${order} LIMIT $${params.length}`;
    const rows = (await this.pool.query(sql, params)).rows.map(toRecord);
    return q.before ? rows.reverse() : rows;
  }

  transition(id: string, from: RunStatus[], patch: RunPatch & { status: RunStatus }, delivery?: NewDelivery): Promise<RunRecord | null> {
    return this.transitionGuarded(id, from, patch, delivery, null);
  }

  /**
   * As transition, but only while `leaseToken` still holds the run (null: unfenced), so a worker that lost its
   * lease loses the write; a refused write is a StorageWriteError (the transaction was rolled back).
   */
  transitionGuarded(
    id: string,
    from: RunStatus[],
    patch: RunPatch & { status: RunStatus },
    delivery: NewDelivery | undefined,
    leaseToken: string | null,
  ): Promise<ClusterRun | null> {
    return this.write(`run status (${patch.status})`, async () => {
      const keys = PATCHABLE.filter((k) => k in patch);
      const params: unknown[] = [id, from];
      const sets = keys.map((k) => {
        params.push(toColumn(k, (patch as Row)[k]));
        return `${k} = $${params.length}`;
      });
      let guard = '';
      if (leaseToken) {
        params.push(leaseToken);
        guard = ` AND lease_token = $${params.length}`;
      }
      const sql = `UPDATE runs SET ${sets.join(', ')} WHERE id = $1 AND status = ANY($2)${guard} RETURNING *`;
      if (!delivery) {
        const { rows } = await this.pool.query(sql, params);
        return rows[0] ? toRecord(rows[0]) : null;
      }
      const c = await this.pool.connect();
      try {
        await c.query('BEGIN');
        const { rows } = await c.query(sql, params);
        if (rows[0]) {
          await c.query('INSERT INTO deliveries (run_id, url, event, body, signing, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6)', [
            delivery.run_id, delivery.url, delivery.event, delivery.body, delivery.signing ?? null, Date.now(),
          ]);
        }
        await c.query('COMMIT');
        return rows[0] ? toRecord(rows[0]) : null;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => {});
        throw err;
      } finally {
        c.release();
      }
    });
  }

  async claimNext(modelIds?: string[]): Promise<RunRecord | null> {
    const { rows } = await this.write('run status (dispatching)', () => this.pool.query(
      `UPDATE runs SET status = 'dispatching'
        WHERE id = (SELECT id FROM runs WHERE status = 'queued' AND ($1::text[] IS NULL OR model_id = ANY($1))
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING *`,
      [modelIds ?? null],
    ));
    return rows[0] ? toRecord(rows[0]) : null;
  }

  async listInFlight(): Promise<RunRecord[]> {
    return (await this.pool.query(`SELECT * FROM runs WHERE status IN ('dispatching','running') ORDER BY id`)).rows.map(toRecord);
  }

  async listQueuedExcept(modelIds: string[]): Promise<RunRecord[]> {
    const { rows } = await this.pool.query(`SELECT * FROM runs WHERE status = 'queued' AND NOT (model_id = ANY($1)) ORDER BY id`, [modelIds]);
    return rows.map(toRecord);
  }

  async countByStatus(): Promise<Record<RunStatus, number>> {
    const out = Object.fromEntries(RUN_STATUSES.map((s) => [s, 0])) as Record<RunStatus, number>;
    const { rows } = await this.pool.query('SELECT status, COUNT(*)::int AS n FROM runs GROUP BY status');
    for (const { status, n } of rows as { status: RunStatus; n: number }[]) out[status] = n;
    return out;
  }

  // ---- worker side -------------------------------------------------------------------------------------

  /**
   * Takes a run for one worker: a queued run of this region, or one whose previous holder's lease ran out
   * (its worker died; that takeover counts as an attempt). The new token fences off the old holder.
   */
  async claimForWorker(id: string, region: string, worker: string, token: string, leaseMs: number): Promise<ClusterRun | null> {
    const now = Date.now();
    const { rows } = await this.pool.query(
      `UPDATE runs SET
         attempts = attempts + CASE WHEN status = 'queued' THEN 0 ELSE 1 END,
         status = 'dispatching', started_at = NULL, lease_token = $4, lease_until = $5, worker = $3
       WHERE id = $1 AND region = $2
         AND (status = 'queued' OR (status IN ('dispatching','running') AND COALESCE(lease_until, 0) < $6))
       RETURNING *`,
      [id, region, worker, token, now + leaseMs, now],
    );
    return rows[0] ? toRecord(rows[0]) : null;
  }

  /** Extends a held lease; false means the run is no longer ours (canceled, moved, or taken over). */
  async renewLease(id: string, token: string, leaseMs: number): Promise<boolean> {
    const { rowCount } = await this.pool.query(
      `UPDATE runs SET lease_until = $3 WHERE id = $1 AND lease_token = $2 AND status IN ('dispatching','running')`,
      [id, token, Date.now() + leaseMs],
    );
    return rowCount === 1;
  }

  async recordExecution(runId: string, worker: string, region: string, won: boolean): Promise<void> {
    await this.pool.query('INSERT INTO run_executions (run_id, worker, region, won, at) VALUES ($1, $2, $3, $4, $5)', [
      runId, worker, region, won, Date.now(),
    ]);
  }

  /** A RunStore view whose transitions are fenced by the lease tokens this worker holds. */
  leased(tokens: Map<string, string>): RunStore {
    return {
      insert: (run) => this.insert(run),
      get: (id) => this.get(id),
      list: (q) => this.list(q),
      transition: (id, from, patch, delivery) => this.transitionGuarded(id, from, patch, delivery, tokens.get(id) ?? '\0none'),
      claimNext: async () => null,
      listInFlight: async () => [],
      listQueuedExcept: async () => [],
      countByStatus: () => this.countByStatus(),
      close: async () => {},
    };
  }

  // ---- api side: placement, moves, sweeping ------------------------------------------------------------

  /**
   * Moves queued runs (and runs whose holder's lease expired) out of `from` (null: not yet placed) to `to`.
   * SKIP LOCKED + the status/region guard mean concurrent replicas never move one run twice in one pass.
   */
  /** `modelIds`: only runs of these run model_ids (one model's queue); absent: every run. */
  async moveRuns(from: string | null, to: string, limit: number, modelIds?: string[]): Promise<string[]> {
    const { rows } = await this.pool.query(
      `UPDATE runs SET region = $2, moves = moves + CASE WHEN region IS NULL THEN 0 ELSE 1 END,
              attempts = attempts + CASE WHEN status = 'queued' THEN 0 ELSE 1 END, status = 'queued'
        WHERE id IN (
          SELECT id FROM runs WHERE region IS NOT DISTINCT FROM $1
             AND (status = 'queued' OR (status IN ('dispatching','running') AND COALESCE(lease_until, 0) < $4))
             AND ($5::text[] IS NULL OR model_id = ANY($5))
           ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING id`,
      [from, to, limit, Date.now(), modelIds ?? null],
    );
    return rows.map((r) => r.id as string);
  }

  /** Runs of a region that should have a job by now: queued for a while, or held under an expired lease. */
  async staleRuns(region: string, queuedBefore: number, limit: number, modelIds?: string[]): Promise<string[]> {
    const { rows } = await this.pool.query(
      `SELECT id FROM runs WHERE region = $1 AND (
          (status = 'queued' AND queued_at < $2) OR (status IN ('dispatching','running') AND COALESCE(lease_until, 0) < $3))
          AND ($5::text[] IS NULL OR model_id = ANY($5))
        ORDER BY id LIMIT $4`,
      [region, queuedBefore, Date.now(), limit, modelIds ?? null],
    );
    return rows.map((r) => r.id as string);
  }

  /**
   * Runs of these run model_ids created before `createdBefore` that wait for a worker: queued (placed or parked),
   * or held under a lease that ran out. Oldest first.
   */
  async waitingRuns(modelIds: string[], createdBefore: number, limit: number): Promise<ClusterRun[]> {
    const { rows } = await this.pool.query(
      `SELECT * FROM runs WHERE model_id = ANY($1) AND created_at < $2
          AND (status = 'queued' OR (status IN ('dispatching','running') AND COALESCE(lease_until, 0) < $3))
        ORDER BY id LIMIT $4`,
      [modelIds, createdBefore, Date.now(), limit],
    );
    return rows.map(toRecord);
  }

  async countUnfinished(): Promise<number> {
    const { rows } = await this.pool.query(`SELECT COUNT(*)::int AS n FROM runs WHERE status IN ('queued','dispatching','running')`);
    return rows[0].n;
  }

  async countsByRegion(): Promise<{ region: string | null; status: RunStatus; n: number; moves: number }[]> {
    const { rows } = await this.pool.query(
      'SELECT region, status, COUNT(*)::int AS n, COALESCE(SUM(moves), 0)::int AS moves FROM runs GROUP BY region, status ORDER BY region, status',
    );
    return rows;
  }

  /** Calls `fn(runId)` on every status change, from any process. Reconnects if the connection drops. */
  async listen(fn: (runId: string) => void, onError: (err: Error) => void): Promise<void> {
    const connect = async () => {
      const client = new pg.Client({ connectionString: this.url, types: TYPES });
      client.on('notification', (msg) => msg.payload && fn(msg.payload));
      client.on('error', (err) => {
        onError(err);
        this.listener = null;
        setTimeout(() => void connect().catch(onError), 1000);
      });
      await client.connect();
      await client.query('LISTEN kleinserve_runs');
      this.listener = client;
    };
    await connect();
  }

  // ---- callback outbox ---------------------------------------------------------------------------------

  /** Claims due deliveries, so two replicas never POST the same callback attempt at once. */
  async dueDeliveries(now: number, limit: number, skipUrlPatterns: string[] = []): Promise<Delivery[]> {
    const skip = skipUrlPatterns.length ? `AND NOT (lower(url) LIKE ANY($3))` : '';
    const { rows } = await this.pool.query(
      `UPDATE deliveries SET next_attempt_at = $1 + ${DELIVERY_CLAIM_MS}
        WHERE id IN (SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 ${skip}
                      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING *`,
      skipUrlPatterns.length ? [now, limit, skipUrlPatterns] : [now, limit],
    );
    return rows.map((r) => ({ ...r, id: Number(r.id) })) as Delivery[];
  }

  async releaseDeliveries(ids: number[]): Promise<void> {
    if (!ids.length) return;
    await this.pool.query(`UPDATE deliveries SET next_attempt_at = $2 WHERE id = ANY($1) AND state = 'pending'`, [ids, Date.now()]);
  }

  async nextDueAt(): Promise<number | null> {
    const { rows } = await this.pool.query(`SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE state = 'pending'`);
    return rows[0].t;
  }

  async recordAttempt(id: number, r: { delivered: boolean; next_attempt_at: number | null; error: string | null; request_id?: string }): Promise<void> {
    const state = r.delivered ? 'delivered' : r.next_attempt_at === null ? 'failed' : 'pending';
    await this.write('callback delivery', () =>
      this.pool.query('UPDATE deliveries SET attempts = attempts + 1, state = $2, next_attempt_at = $3, last_error = $4, request_id = $5 WHERE id = $1', [
        id, state, r.next_attempt_at ?? 0, r.error, r.request_id ?? null,
      ]),
    );
  }

  async getDeliveries(runId: string): Promise<Delivery[]> {
    const { rows } = await this.pool.query('SELECT * FROM deliveries WHERE run_id = $1 ORDER BY id', [runId]);
    return rows.map((r) => ({ ...r, id: Number(r.id) })) as Delivery[];
  }

  async close(): Promise<void> {
    const l = this.listener;
    this.listener = null;
    l?.removeAllListeners('error');
    l?.on('error', () => {});
    await l?.end().catch(() => {});
    await this.pool.end();
  }
}
