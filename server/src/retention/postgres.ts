// Postgres side of retention for cluster replicas. Any replica may sweep: every statement only touches
// terminal runs and is idempotent, so two sweepers at once just do some work twice.
import type pg from 'pg';
import { TERMINAL, type RunRecord, type RunStatus } from '../runs/types.ts';
import type { RetentionStore } from './store.ts';

const TERMINAL_LIST = [...TERMINAL];

export class PostgresRetentionStore implements RetentionStore {
  private ready: Promise<unknown>;

  constructor(private readonly pool: pg.Pool) {
    this.ready = pool.query('CREATE TABLE IF NOT EXISTS run_erasures (run_id TEXT PRIMARY KEY, erased_at BIGINT NOT NULL)').catch(() => {
      // Another replica created it at the same moment; the next statement will tell if it is really missing.
    });
  }

  private async q(sql: string, params: unknown[]) {
    await this.ready;
    return this.pool.query(sql, params);
  }

  async unerased(statuses: RunStatus[], before: number, limit: number): Promise<RunRecord[]> {
    const terminal = statuses.filter((s) => TERMINAL.has(s));
    const r = await this.q(
      `SELECT * FROM runs WHERE status = ANY($1) AND completed_at < $2
         AND NOT EXISTS (SELECT 1 FROM run_erasures e WHERE e.run_id = runs.id)
       ORDER BY completed_at LIMIT $3`,
      [terminal, before, limit],
    );
    return r.rows as RunRecord[];
  }

  async markErased(runId: string, at: number): Promise<void> {
    await this.q('INSERT INTO run_erasures (run_id, erased_at) VALUES ($1, $2) ON CONFLICT DO NOTHING', [runId, at]);
  }

  async expiredRecords(before: number, limit: number): Promise<RunRecord[]> {
    const r = await this.q('SELECT * FROM runs WHERE status = ANY($1) AND created_at < $2 ORDER BY created_at LIMIT $3', [TERMINAL_LIST, before, limit]);
    return r.rows as RunRecord[];
  }

  async deleteRecord(runId: string): Promise<boolean> {
    await this.ready;
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const gone = ((await c.query('DELETE FROM runs WHERE id = $1 AND status = ANY($2)', [runId, TERMINAL_LIST])).rowCount ?? 0) > 0;
      if (gone) {
        await c.query(`DELETE FROM deliveries WHERE run_id = $1 AND state <> 'pending'`, [runId]);
        await c.query('DELETE FROM run_erasures WHERE run_id = $1', [runId]);
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
