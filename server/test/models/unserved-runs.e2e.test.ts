// A restart that drops a model must not strand its runs. `serve` starts with the tiny model as flux-2-klein-4b and the
// tiny base model as flux-2-klein-base-4b, takes runs for both while the engines load, and stops before the base
// engine is ready; one base run is then left `dispatching` in SQLite, as a process killed mid-dispatch leaves it.
// Restarted with only the tiny model, the node fails both base runs (the queued one and the one recover() requeued)
// with MODEL_UNAVAILABLE naming the model, delivers one callback each, and runs the 4B run; a further restart
// changes nothing.
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { callbackReceiver } from '../helpers/receivers.ts';
import { Api, startServer, tmpDir, waitFor, type ServerHandle } from '../helpers/server.ts';

vi.setConfig({ testTimeout: 240_000, hookTimeout: 240_000 });

const KEY = 'unserved_key';
const DISTILLED = 'black-forest-labs/flux-2-klein-4b';
const BASE = 'black-forest-labs/flux-2-klein-base-4b';
const ENV = { KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1', KLEINSERVE_CALLBACK_BASE_DELAY_MS: '50' };

let dataDir: string;
let srv: ServerHandle | undefined;
let hooks: Awaited<ReturnType<typeof callbackReceiver>>;
const ids: Record<'queued' | 'recovered' | 'served', string> = { queued: '', recovered: '', served: '' };

async function create(url: string, route: string, hook: string, image: string): Promise<any> {
  const res = await fetch(`${url}/v1/models/${route}/edit/runs`, {
    method: 'POST',
    headers: new Api(url, KEY).headers(),
    body: JSON.stringify({ input: { prompt: 'a lighthouse', image_urls: [image], steps: 2, seed: 3 }, callback_url: hooks.url(hook) }),
  });
  const body = (await res.json()) as any;
  expect(res.status, JSON.stringify(body)).toBe(200);
  return body;
}

beforeAll(async () => {
  dataDir = tmpDir('ks-unserved-');
  hooks = await callbackReceiver();
  const image = dataUri(await testImage(64, 64));
  // Runs are taken while the engines load (they wait queued); the base engine is never ready in this life.
  srv = await startServer({ dataDir, apiKeys: [KEY], env: ENV, args: ['--model', 'flux-2-klein-base-4b=tiny-base'], waitReady: false });
  const url = srv.url;
  ids.queued = (await create(url, BASE, '/queued', image)).id;
  ids.recovered = (await create(url, BASE, '/recovered', image)).id;
  ids.served = (await create(url, DISTILLED, '/served', image)).id;
  const base = await Promise.all([ids.queued, ids.recovered].map((id) => new Api(url, KEY).get(id)));
  expect(base.map((r) => r.status_code)).toEqual(['queued', 'queued']);
  await srv.stop();
  srv = undefined;
  const db = new Database(path.join(dataDir, 'runs.db'));
  expect(db.prepare(`UPDATE runs SET status = 'dispatching' WHERE id = ? AND status = 'queued'`).run(ids.recovered).changes).toBe(1);
  db.close();
  srv = await startServer({ dataDir, apiKeys: [KEY], env: ENV });
});

afterAll(async () => {
  await srv?.dispose();
  await hooks?.close();
});

describe('a restart without a model', () => {
  it('fails that model’s queued and recovered runs at start with MODEL_UNAVAILABLE, naming the model', async () => {
    const api = new Api(srv!.url, KEY);
    for (const id of [ids.queued, ids.recovered]) {
      const run = await api.get(id);
      expect(run.status_code, JSON.stringify(run)).toBe('failed');
      expect(run.failure_code).toBe('MODEL_UNAVAILABLE');
      expect(run.failure_stage_code).toBe('dispatch');
      expect(run.failure_message).toContain(`${BASE} is not served by this node (it serves ${DISTILLED})`);
      expect(run.error).toMatchObject({ code: 'MODEL_UNAVAILABLE' });
      expect(run.completed_at).not.toBeNull();
    }
  });

  it('delivers each failure’s callback once, and runs the served model’s run', async () => {
    await waitFor(() => hooks.received.filter((r) => r.body.run_id !== ids.served).length >= 2, 30_000, 'both failure callbacks');
    for (const id of [ids.queued, ids.recovered]) {
      const got = hooks.received.filter((r) => r.body.run_id === id);
      expect(got).toHaveLength(1);
      expect(got[0].body).toMatchObject({ event: 'run.failed', status: 'failed' });
      expect(JSON.stringify(got[0].body.output)).toContain('MODEL_UNAVAILABLE');
    }
    const served = await new Api(srv!.url, KEY).waitTerminal(ids.served, 180_000);
    expect(served.status_code, JSON.stringify(served.error)).toBe('succeeded');
  });

  it('changes nothing on a further restart: no second failure, no second callback', async () => {
    const api = new Api(srv!.url, KEY);
    const before = await Promise.all([ids.queued, ids.recovered].map((id) => api.get(id)));
    await srv!.stop();
    srv = await startServer({ dataDir, apiKeys: [KEY], env: ENV, waitReady: false });
    const again = new Api(srv.url, KEY);
    const after = await Promise.all([ids.queued, ids.recovered].map((id) => again.get(id)));
    expect(after.map((r) => [r.status_code, r.completed_at, r.failure_message])).toEqual(before.map((r) => [r.status_code, r.completed_at, r.failure_message]));
    await new Promise((r) => setTimeout(r, 1000));
    for (const id of [ids.queued, ids.recovered]) expect(hooks.received.filter((r) => r.body.run_id === id)).toHaveLength(1);
  });
});
