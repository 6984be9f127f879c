// SQLite side of idempotency, in the run database (its own table, created here, so the run store's
// migrations stay the run store's). One writer at a time plus an IMMEDIATE transaction makes reserve atomic.
import type Database from 'better-sqlite3';
import type { IdempotencyStore, Reservation } from './store.ts';

export class SqliteIdempotencyStore implements IdempotencyStore {
  private readonly reserveTx: (scope: string, key: string, now: number, windowMs: number, staleMs: number, fingerprint: string | null) => Reservation;

  constructor(private readonly db: Database.Database) {
    db.exec(`CREATE TABLE IF NOT EXISTS idempotency_keys (
               scope TEXT NOT NULL,
               key TEXT NOT NULL,
               run_id TEXT,
               created_at INTEGER NOT NULL,
               fingerprint TEXT,
               PRIMARY KEY (scope, key)
             );
             CREATE INDEX IF NOT EXISTS idempotency_run ON idempotency_keys(run_id);
             CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency_keys(created_at);`);
    // Databases made before requests were fingerprinted lack the column.
    const columns = db.prepare('PRAGMA table_info(idempotency_keys)').all() as { name: string }[];
    if (!columns.some((c) => c.name === 'fingerprint')) db.exec('ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT');
    const get = db.prepare('SELECT run_id, created_at, fingerprint FROM idempotency_keys WHERE scope = ? AND key = ?');
    const put = db.prepare(
      `INSERT INTO idempotency_keys (scope, key, run_id, created_at, fingerprint) VALUES (?, ?, NULL, ?, ?)
       ON CONFLICT (scope, key) DO UPDATE SET run_id = NULL, created_at = excluded.created_at, fingerprint = excluded.fingerprint`,
    );
    const tx = db.transaction((scope: string, key: string, now: number, windowMs: number, staleMs: number, fingerprint: string | null): Reservation => {
      const row = get.get(scope, key) as { run_id: string | null; created_at: number; fingerprint: string | null } | undefined;
      const live = row && row.created_at > now - windowMs && (row.run_id !== null || row.created_at > now - staleMs);
      if (live) return { won: false, runId: row.run_id, fingerprint: row.fingerprint ?? undefined };
      put.run(scope, key, now, fingerprint);
      return { won: true };
    });
    this.reserveTx = (...args) => tx.immediate(...args);
  }

  async reserve(scope: string, key: string, now: number, windowMs: number, staleMs: number, fingerprint?: string): Promise<Reservation> {
    return this.reserveTx(scope, key, now, windowMs, staleMs, fingerprint ?? null);
  }

  async isLive(scope: string, key: string, now: number, windowMs: number): Promise<boolean> {
    return this.db.prepare('SELECT 1 FROM idempotency_keys WHERE scope = ? AND key = ? AND created_at > ?').get(scope, key, now - windowMs) !== undefined;
  }

  async bind(scope: string, key: string, runId: string): Promise<void> {
    this.db.prepare('UPDATE idempotency_keys SET run_id = ? WHERE scope = ? AND key = ?').run(runId, scope, key);
  }

  async release(scope: string, key: string): Promise<void> {
    this.db.prepare('DELETE FROM idempotency_keys WHERE scope = ? AND key = ?').run(scope, key);
  }

  async forgetRun(runId: string): Promise<void> {
    this.db.prepare('DELETE FROM idempotency_keys WHERE run_id = ?').run(runId);
  }

  async purge(before: number): Promise<number> {
    return this.db.prepare('DELETE FROM idempotency_keys WHERE created_at < ?').run(before).changes;
  }
}
