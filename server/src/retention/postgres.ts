// Postgres side of retention for the api role: which runs' files are due for erasure, and the erasure marks.
import type pg from 'pg';
import { TERMINAL, type RunRecord, type RunStatus } from '../runs/types.ts';
import type { RetentionStore } from './store.ts';

const TERMINAL_LIST = [...TERMINAL];

export class PgRetentionStore implements RetentionStore {
  constructor(private readonly pool: pg.Pool) {}

  async unerased(statuses: RunStatus[], before: number, limit: number): Promise<RunRecord[]> {
    const terminal = statuses.filter((s) => TERMINAL.has(s));
    if (!terminal.length) return [];
    const { rows } = await this.pool.query(
      `SELECT * FROM runs WHERE status = ANY($1) AND completed_at < $2
         AND NOT EXISTS (SELECT 1 FROM run_erasures e WHERE e.run_id = runs.id)
       ORDER BY completed_at LIMIT $3`,
      [terminal, before, limit],
    );
    return rows;
  }

  async markErased(runId: string, at: number): Promise<void> {
    await this.pool.query('INSERT INTO run_erasures (run_id, erased_at) VALUES ($1, $2) ON CONFLICT DO NOTHING', [runId, at]);
  }

  async expiredRecords(before: number, limit: number): Promise<RunRecord[]> {
    const { rows } = await this.pool.query(
      'SELECT * FROM runs WHERE status = ANY($1) AND created_at < $2 ORDER BY created_at LIMIT $3',
      [TERMINAL_LIST, before, limit],
    );
    return rows;
  }

  async existingRuns(runIds: string[]): Promise<Set<string>> {
    if (!runIds.length) return new Set();
    const { rows } = await this.pool.query('SELECT id FROM runs WHERE id = ANY($1)', [runIds]);
    return new Set(rows.map((r: { id: string }) => r.id));
  }

  async deleteRecord(runId: string): Promise<boolean> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const gone = ((await c.query('DELETE FROM runs WHERE id = $1 AND status = ANY($2)', [runId, TERMINAL_LIST])).rowCount ?? 0) > 0;
      if (gone) {
        await c.query(`DELETE FROM deliveries WHERE run_id = $1 AND state != 'pending'`, [runId]);
        await c.query('DELETE FROM run_erasures WHERE run_id = $1', [runId]);
        await c.query('DELETE FROM run_executions WHERE run_id = $1', [runId]);
      }
      await c.query('COMMIT');
      return gone;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }
}
