// The idempotency store on real SQLite: two connections to one database stand in for two API processes.
import Database from 'better-sqlite3';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { claimIdempotency } from '../../src/idempotency/claim.ts';
import { SqliteIdempotencyStore } from '../../src/idempotency/sqlite.ts';
import { tmpDir } from '../helpers/server.ts';

const open = (file: string) => {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('busy_timeout = 5000');
  return new SqliteIdempotencyStore(db);
};

describe('SqliteIdempotencyStore', () => {
  it('lets exactly one of two connections win a key; the other then sees the bound run', async () => {
    const file = path.join(tmpDir('ks-idem-'), 'runs.db');
    const [a, b] = [open(file), open(file)];
    const now = Date.now();
    const ra = await a.reserve('s', 'k', now, 60_000, 10_000);
    const rb = await b.reserve('s', 'k', now, 60_000, 10_000);
    expect([ra.won, rb.won]).toEqual([true, false]);
    expect(rb).toEqual({ won: false, runId: null });
    await a.bind('s', 'k', 'run-1');
    expect(await b.reserve('s', 'k', now + 1, 60_000, 10_000)).toEqual({ won: false, runId: 'run-1' });
    expect(await b.reserve('other-scope', 'k', now, 60_000, 10_000)).toEqual({ won: true });
  });

  it('a key is free again after its window, and a dead owner\'s reservation after staleMs', async () => {
    const s = open(path.join(tmpDir('ks-idem-'), 'runs.db'));
    await s.reserve('s', 'done', 0, 1000, 100);
    await s.bind('s', 'done', 'run-1');
    expect((await s.reserve('s', 'done', 999, 1000, 100)).won).toBe(false);
    expect((await s.reserve('s', 'done', 1001, 1000, 100)).won).toBe(true);
    await s.reserve('s', 'orphan', 0, 1000, 100);
    expect((await s.reserve('s', 'orphan', 50, 1000, 100)).won).toBe(false);
    expect((await s.reserve('s', 'orphan', 101, 1000, 100)).won).toBe(true);
  });

  it('claimIdempotency: racing claims across connections yield one creator, the rest get its run', async () => {
    const file = path.join(tmpDir('ks-idem-'), 'runs.db');
    const stores = [open(file), open(file), open(file)];
    const claims = await Promise.all(stores.map((store) => claimIdempotency({ store, windowMs: 60_000, waitMs: 5000 }, 'scope', 'burst').then(async (c) => {
      if (c.kind === 'new') await c.bind('run-42');
      return c;
    })));
    // The first to reserve creates; claims still waiting for its bind return its run.
    const kinds = claims.map((c) => c.kind).sort();
    expect(kinds.filter((k) => k === 'new')).toHaveLength(1);
    expect(claims.filter((c) => c.kind === 'existing').every((c) => c.kind === 'existing' && c.runId === 'run-42')).toBe(true);
  });
});
