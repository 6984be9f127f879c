// The retention sweeper on the real SQLite run store and real files: what expires, what must not be touched.
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { loadPolicyConfig } from '../../src/policy-config.ts';
import { embeddedPolicy } from '../../src/roles/backends.ts';
import { RunEventBus } from '../../src/runs/events.ts';
import { SqliteStore } from '../../src/runs/sqlite-store.ts';
import type { RunRecord, RunStatus } from '../../src/runs/types.ts';
import { DiskStore } from '../../src/storage/disk-store.ts';
import { tmpDir } from '../helpers/server.ts';

const DAY = 24 * 3600_000;
const NOW = Date.UTC(2026, 10, 24);

function record(id: string, status: RunStatus, createdAgo: number, completedAgo: number | null): RunRecord {
  return {
    id, status, model_id: 'm',
    input: { prompt: 'p', images: [{ kind: 'inline', key: `inputs/${id}/0`, bytes: 3 }], seed: 1, steps: 1, output_format: 'jpeg', output_quality: 90, width: null, height: null, num_images: 1 },
    output: status === 'succeeded' ? { images: [{ key: `outputs/${id}/tok.jpg`, content_type: 'image/jpeg', width: 8, height: 8 }], seed: 1, timing: {} } : null,
    metadata: null, client_ref: null, callback_url: null,
    created_at: NOW - createdAgo, started_at: null, completed_at: completedAgo === null ? null : NOW - completedAgo,
    failure_code: null, failure_message: null, failure_stage_code: null, attempts: 0, output_token: 'tok',
  };
}

describe('RetentionSweeper', () => {
  it('expires outputs after 24 h and records after 30 days, never touching runs in flight', async () => {
    const dir = tmpDir('ks-retention-');
    const store = new SqliteStore(path.join(dir, 'runs.db'));
    const objects = new DiskStore(path.join(dir, 'objects'));
    const h = embeddedPolicy({
      cfg: loadPolicyConfig({}), dbFile: path.join(dir, 'runs.db'), objects, bus: new RunEventBus(), logger: pino({ level: 'silent' }), waitCapSeconds: 60,
    });
    const runs = [
      record('fresh', 'succeeded', 2 * 3600_000, 3600_000), // output kept
      record('day-old', 'succeeded', 2 * DAY, 2 * DAY), // output erased, record kept
      record('ancient', 'succeeded', 31 * DAY, 31 * DAY), // record deleted
      record('failed', 'failed', 3600_000, 3600_000), // files erased at once
      record('stuck', 'running', 31 * DAY, null), // in flight: untouched, however old
      record('queued', 'queued', 40 * DAY, null),
    ];
    for (const r of runs) {
      await store.insert(r);
      await objects.put(`inputs/${r.id}/0`, Buffer.from('abc'));
      if (r.output) await objects.put(r.output.images[0].key, Buffer.from('jpg'));
    }
    const result = await h.retention.sweep(NOW);
    expect(result).toEqual({ erased: 3, deleted: 1, orphans: 0 });
    const has = (key: string) => objects.exists(key);
    expect(await has('outputs/fresh/tok.jpg')).toBe(true);
    expect(await has('outputs/day-old/tok.jpg')).toBe(false);
    expect(await has('inputs/day-old/0')).toBe(false);
    expect(await store.get('day-old')).not.toBeNull();
    expect(await store.get('ancient')).toBeNull();
    expect(await has('outputs/ancient/tok.jpg')).toBe(false);
    expect(await has('inputs/failed/0')).toBe(false);
    for (const id of ['stuck', 'queued']) {
      expect((await store.get(id))?.status).toBe(id === 'stuck' ? 'running' : 'queued');
      expect(await has(`inputs/${id}/0`)).toBe(true);
    }
    // Idempotent: a second pass finds nothing left to do.
    expect(await h.retention.sweep(NOW)).toEqual({ erased: 0, deleted: 0, orphans: 0 });
    await h.close();
    await store.close();
  });
});
