// Embedded run store: one SQLite file in the data directory, WAL mode, schema versioned by user_version.
import Database from 'better-sqlite3';
import type { Delivery, DeliveryStore, ListQuery, NewDelivery, RunStore } from './store.ts';
import { RUN_STATUSES, type RunPatch, type RunRecord, type RunStatus } from './types.ts';
import { asStorageWriteError, StorageWriteError, type WriteFailureListener } from '../storage/write-failure.ts';

const MIGRATIONS: string[] = [
  `CREATE TABLE runs (
     id TEXT PRIMARY KEY,
     status TEXT NOT NULL,
     model_id TEXT NOT NULL,
     input TEXT NOT NULL,
     output TEXT,
     metadata TEXT,
     client_ref TEXT,
     callback_url TEXT,
     created_at INTEGER NOT NULL,
     started_at INTEGER,
     completed_at INTEGER,
     failure_code TEXT,
     failure_message TEXT,
     failure_stage_code TEXT,
     attempts INTEGER NOT NULL DEFAULT 0,
     output_token TEXT NOT NULL
   );
   CREATE INDEX runs_status ON runs(status, id);
   CREATE TABLE deliveries (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     run_id TEXT NOT NULL,
     url TEXT NOT NULL,
     event TEXT NOT NULL,
     body TEXT NOT NULL,
     attempts INTEGER NOT NULL DEFAULT 0,
     next_attempt_at INTEGER NOT NULL,
     state TEXT NOT NULL DEFAULT 'pending',
     last_error TEXT
   );
   CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);`,
  // Each callback attempt's Runflow-Request-Id.
  `ALTER TABLE deliveries ADD COLUMN request_id TEXT;`,
  // A run's own callback contract (surfaces other than Runflow's), and how each delivery is signed.
  `ALTER TABLE runs ADD COLUMN callback TEXT;
   ALTER TABLE deliveries ADD COLUMN signing TEXT;`,
];

const JSON_COLUMNS = new Set(['input', 'output', 'metadata', 'callback']);
const PATCHABLE = [
  'status', 'output', 'metadata', 'client_ref', 'callback_url', 'started_at', 'completed_at',
  'failure_code', 'failure_message', 'failure_stage_code', 'attempts',
] as const;

type Row = Record<string, unknown>;

function toRecord(row: Row): RunRecord {
  const r: Row = { ...row };
  for (const c of JSON_COLUMNS) r[c] = row[c] == null ? null : JSON.parse(row[c] as string);
  return r as unknown as RunRecord;
}

function toColumn(key: string, value: unknown): unknown {
  if (value === undefined) return null;
  return JSON_COLUMNS.has(key) && value !== null ? JSON.stringify(value) : value;
}

export class SqliteStore implements RunStore, DeliveryStore {
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<SqliteStore['prepare']>;
  // transition() builds its SQL from the patch's keys; only a handful of shapes exist, and preparing
  // one each call showed in the request profile.
  private readonly transitionStmts = new Map<string, Database.Statement>();

  constructor(
    file: string,
    private readonly onWriteFailure?: WriteFailureListener,
  ) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode survives a process crash (kill -9); only an OS crash can lose the last commits.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
    this.stmts = this.prepare();
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  private prepare() {
    const cols = [
      'id', 'status', 'model_id', 'input', 'output', 'metadata', 'client_ref', 'callback_url', 'created_at',
      'started_at', 'completed_at', 'failure_code', 'failure_message', 'failure_stage_code', 'attempts', 'output_token',
      'callback',
    ];
    return {
      cols,
      insert: this.db.prepare(`INSERT INTO runs (${cols.join(',')}) VALUES (${cols.map((c) => '@' + c).join(',')})`),
      get: this.db.prepare('SELECT * FROM runs WHERE id = ?'),
      claim: this.db.prepare(
        `UPDATE runs SET status = 'dispatching'
          WHERE id = (SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1) AND status = 'queued'
          RETURNING *`,
      ),
      inFlight: this.db.prepare(`SELECT * FROM runs WHERE status IN ('dispatching','running') ORDER BY id`),
      counts: this.db.prepare('SELECT status, COUNT(*) AS n FROM runs GROUP BY status'),
      addDelivery: this.db.prepare(
        `INSERT INTO deliveries (run_id, url, event, body, signing, next_attempt_at) VALUES (@run_id, @url, @event, @body, @signing, @now)`,
      ),
      due: this.db.prepare(
        `SELECT * FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?`,
      ),
      nextDue: this.db.prepare(`SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE state = 'pending'`),
      attempt: this.db.prepare(
        `UPDATE deliveries SET attempts = attempts + 1, state = @state, next_attempt_at = @next, last_error = @error, request_id = @request_id WHERE id = @id`,
      ),
      deliveriesOf: this.db.prepare('SELECT * FROM deliveries WHERE run_id = ? ORDER BY id'),
    };
  }

  async insert(run: RunRecord): Promise<void> {
    const params: Row = {};
    for (const c of this.stmts.cols) params[c] = toColumn(c, (run as unknown as Row)[c]);
    this.write('run record', () => this.stmts.insert.run(params));
  }

  /** Runs a write; a full or failing database becomes a StorageWriteError naming `what` (SQLite has rolled it back). */
  private write<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      const failure = asStorageWriteError(what, 'runs', err);
      if (failure instanceof StorageWriteError) this.onWriteFailure?.(failure);
      throw failure;
    }
  }

  async get(id: string): Promise<RunRecord | null> {
    const row = this.stmts.get.get(id) as Row | undefined;
    return row ? toRecord(row) : null;
  }

  async list(q: ListQuery): Promise<RunRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (q.cursor) {
      where.push('id < ?');
      params.push(q.cursor);
    }
    if (q.before) {
      where.push('id > ?');
      params.push(q.before);
    }
    if (q.status?.length) {
      where.push(`status IN (${q.status.map(() => '?').join(',')})`);
      params.push(...q.status);
    }
    // A previous page is the nearest newer runs: read upwards, answer newest first.
    const order = q.before ? 'ASC' : 'DESC';
    const sql = `SELECT * FROM runs ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id ${order} LIMIT ?`;
    const rows = (this.db.prepare(sql).all(...params, q.limit) as Row[]).map(toRecord);
    return q.before ? rows.reverse() : rows;
  }

  async transition(
    id: string,
    from: RunStatus[],
    patch: RunPatch & { status: RunStatus },
    delivery?: NewDelivery,
  ): Promise<RunRecord | null> {
    const keys = PATCHABLE.filter((k) => k in patch);
    const sets = keys.map((k) => `${k} = @${k}`).join(', ');
    const params: Row = { id };
    for (const k of keys) params[k] = toColumn(k, (patch as Row)[k]);
    from.forEach((s, i) => (params[`f${i}`] = s));
    const sql = `UPDATE runs SET ${sets} WHERE id = @id AND status IN (${from.map((_, i) => '@f' + i).join(',')}) RETURNING *`;
    const run = this.write(`run status (${patch.status})`, () =>
      this.db.transaction(() => {
        const row = this.transitionStatement(sql).get(params) as Row | undefined;
        if (row && delivery) this.stmts.addDelivery.run({ ...delivery, signing: delivery.signing ?? null, now: Date.now() });
        return row;
      })(),
    );
    return run ? toRecord(run) : null;
  }

  private transitionStatement(sql: string): Database.Statement {
    let stmt = this.transitionStmts.get(sql);
    if (!stmt) this.transitionStmts.set(sql, (stmt = this.db.prepare(sql)));
    return stmt;
  }

  async claimNext(modelIds?: string[]): Promise<RunRecord | null> {
    const stmt = modelIds ? this.claimOf(modelIds) : this.stmts.claim;
    const row = this.write('run status (dispatching)', () => stmt.get(...(modelIds ?? []))) as Row | undefined;
    return row ? toRecord(row) : null;
  }

  private readonly claimsByModels = new Map<string, Database.Statement>();

  /** The claim restricted to some models' runs (one engine's), prepared once per set. */
  private claimOf(modelIds: string[]): Database.Statement {
    const key = modelIds.join('\n');
    let stmt = this.claimsByModels.get(key);
    if (!stmt) {
      const marks = modelIds.map(() => '?').join(',');
      stmt = this.db.prepare(
        `UPDATE runs SET status = 'dispatching'
          WHERE id = (SELECT id FROM runs WHERE status = 'queued' AND model_id IN (${marks}) ORDER BY id LIMIT 1) AND status = 'queued'
          RETURNING *`,
      );
      this.claimsByModels.set(key, stmt);
    }
    return stmt;
  }

  async listInFlight(): Promise<RunRecord[]> {
    return (this.stmts.inFlight.all() as Row[]).map(toRecord);
  }

  async listQueuedExcept(modelIds: string[]): Promise<RunRecord[]> {
    const outside = modelIds.length ? ` AND model_id NOT IN (${modelIds.map(() => '?').join(',')})` : '';
    return (this.db.prepare(`SELECT * FROM runs WHERE status = 'queued'${outside} ORDER BY id`).all(...modelIds) as Row[]).map(toRecord);
  }

  async countByStatus(): Promise<Record<RunStatus, number>> {
    const out = Object.fromEntries(RUN_STATUSES.map((s) => [s, 0])) as Record<RunStatus, number>;
    for (const { status, n } of this.stmts.counts.all() as { status: RunStatus; n: number }[]) out[status] = n;
    return out;
  }

  async dueDeliveries(now: number, limit: number, skipUrlPatterns: string[] = []): Promise<Delivery[]> {
    if (!skipUrlPatterns.length) return this.stmts.due.all(now, limit) as Delivery[];
    const skip = skipUrlPatterns.map(() => `AND lower(url) NOT LIKE ? ESCAPE '\\'`).join(' ');
    const sql = `SELECT * FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ? ${skip} ORDER BY next_attempt_at LIMIT ?`;
    return this.db.prepare(sql).all(now, ...skipUrlPatterns, limit) as Delivery[];
  }

  async nextDueAt(): Promise<number | null> {
    return (this.stmts.nextDue.get() as { t: number | null }).t;
  }

  async recordAttempt(id: number, r: { delivered: boolean; next_attempt_at: number | null; error: string | null; request_id?: string }): Promise<void> {
    const state = r.delivered ? 'delivered' : r.next_attempt_at === null ? 'failed' : 'pending';
    this.write('callback delivery', () => this.stmts.attempt.run({ id, state, next: r.next_attempt_at ?? 0, error: r.error, request_id: r.request_id ?? null }));
  }

  async getDeliveries(runId: string): Promise<Delivery[]> {
    return this.stmts.deliveriesOf.all(runId) as Delivery[];
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
