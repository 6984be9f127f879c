// The write probes StorageHealth runs: each writes something tiny where real writes go, so a full or
// read-only volume shows before a client's request meets it.
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import type pg from 'pg';
import type { StorageCheck } from './health.ts';
import type { ObjectStore } from './object-store.ts';

/** Puts and removes a small object under `probes/`, a prefix no run uses (the sweeper leaves it alone). */
export function objectStoreProbe(objects: ObjectStore): StorageCheck {
  const key = `probes/${randomBytes(8).toString('hex')}`;
  return {
    name: 'objects',
    async probe() {
      await objects.put(key, Buffer.alloc(4096, 1));
      await objects.delete(key);
    },
  };
}

/** Upserts one row in the run database file through its own connection (WAL lets it sit beside the store's). */
export function sqliteProbe(file: string): StorageCheck & { close(): void } {
  let db: Database.Database | null = null;
  return {
    name: 'runs',
    async probe() {
      db ??= new Database(file);
      db.pragma('busy_timeout = 5000');
      db.exec('CREATE TABLE IF NOT EXISTS storage_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)');
      db.prepare('INSERT OR REPLACE INTO storage_probe (id, at) VALUES (1, ?)').run(Date.now());
    },
    close() {
      db?.close();
      db = null;
    },
  };
}

/** Upserts one row in the cluster's Postgres database (a full disk or a read-only replica refuses it). */
export function postgresProbe(pool: pg.Pool): StorageCheck {
  let created = false;
  return {
    name: 'runs',
    async probe() {
      if (!created) {
        // Replicas starting together race on the catalog; the loser's duplicate errors mean it exists.
        await pool.query('CREATE TABLE IF NOT EXISTS storage_probe (id INTEGER PRIMARY KEY, at BIGINT NOT NULL)').catch((err) => {
          if (!['23505', '42P07'].includes((err as { code?: string }).code ?? '')) throw err;
        });
        created = true;
      }
      await pool.query('INSERT INTO storage_probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at', [Date.now()]);
    },
  };
}
