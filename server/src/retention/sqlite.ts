// SQLite side of retention, in the run database. Erasures get their own table (created here) so the run
// store's schema and migrations stay the run store's.
import type Database from 'better-sqlite3';
import { TERMINAL, type RunRecord, type RunStatus } from '../runs/types.ts';
import type { RetentionStore } from './store.ts';

const JSON_COLUMNS = ['input', 'output', 'metadata'] as const;
const TERMINAL_SQL = [...TERMINAL].map((s) => `'${s}'`).join(',');

function toRecord(row: Record<string, unknown>): RunRecord {
  const r = { ...row };
  for (const c of JSON_COLUMNS) r[c] = row[c] == null ? null : JSON.parse(row[c] as string);
  return r as unknown as RunRecord;
}

export class SqliteRetentionStore implements RetentionStore {
  constructor(private readonly db: Database.Database) {
    db.exec(`CREATE TABLE IF NOT EXISTS run_erasures (run_id TEXT PRIMARY KEY, erased_at INTEGER NOT NULL);`);
  }

  async unerased(statuses: RunStatus[], before: number, limit: number): Promise<RunRecord[]> {
    const terminal = statuses.filter((s) => TERMINAL.has(s));
    if (!terminal.length) return [];
    const rows = this.db
      .prepare(
        `SELECT * FROM runs WHERE status IN (${terminal.map(() => '?').join(',')}) AND completed_at < ?
           AND NOT EXISTS (SELECT 1 FROM run_erasures e WHERE e.run_id = runs.id)
         ORDER BY completed_at LIMIT ?`,
      )
      .all(...terminal, before, limit) as Record<string, unknown>[];
    return rows.map(toRecord);
  }

  async markErased(runId: string, at: number): Promise<void> {
    this.db.prepare('INSERT OR IGNORE INTO run_erasures (run_id, erased_at) VALUES (?, ?)').run(runId, at);
  }

  async expiredRecords(before: number, limit: number): Promise<RunRecord[]> {
    const rows = this.db
      .prepare(`SELECT * FROM runs WHERE status IN (${TERMINAL_SQL}) AND created_at < ? ORDER BY created_at LIMIT ?`)
      .all(before, limit) as Record<string, unknown>[];
    return rows.map(toRecord);
  }

  async existingRuns(runIds: string[]): Promise<Set<string>> {
    if (!runIds.length) return new Set();
    const rows = this.db.prepare(`SELECT id FROM runs WHERE id IN (${runIds.map(() => '?').join(',')})`).all(...runIds) as { id: string }[];
    return new Set(rows.map((r) => r.id));
  }

  async deleteRecord(runId: string): Promise<boolean> {
    return this.db.transaction(() => {
      const gone = this.db.prepare(`DELETE FROM runs WHERE id = ? AND status IN (${TERMINAL_SQL})`).run(runId).changes > 0;
      if (gone) {
        // A pending callback still goes out (it carries no image bytes); settled ones go with the run.
        this.db.prepare(`DELETE FROM deliveries WHERE run_id = ? AND state != 'pending'`).run(runId);
        this.db.prepare('DELETE FROM run_erasures WHERE run_id = ?').run(runId);
      }
      return gone;
    })();
  }
}
