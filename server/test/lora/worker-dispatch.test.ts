// The dispatch side of LoRAs, as a cluster worker runs it (the api replica only checked the names): the run's
// adapters are fetched here, under the fetch guard, and handed to the engine as a local file plus its sha256;
// one that cannot be fetched fails the run naming input.loras[i]. Real dispatcher, store, fetcher and cache;
// the engine is the protocol-speaking test double, which records what it was sent.
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdapterResolver } from '../../src/adapters/resolver.ts';
import { sha256Of } from '../../src/adapters/cache.ts';
import { LocalDispatcher } from '../../src/dispatch/local-dispatcher.ts';
import { parseAllowlist } from '../../src/images/index.ts';
import { RunEventBus } from '../../src/runs/events.ts';
import { RunLifecycle } from '../../src/runs/lifecycle.ts';
import { SqliteStore } from '../../src/runs/sqlite-store.ts';
import { isTerminal, type RunRecord } from '../../src/runs/types.ts';
import { DiskStore } from '../../src/storage/disk-store.ts';
import { FakeEngine, FakeEngineAdapter } from '../helpers/fake-engine.ts';
import { tmpDir } from '../helpers/server.ts';

const PUBLIC = '127.0.0.2';
const LORA = (() => {
  const header = JSON.stringify({
    'transformer.proj_out.lora_A.weight': { dtype: 'F32', shape: [2, 8], data_offsets: [0, 64] },
    'transformer.proj_out.lora_B.weight': { dtype: 'F32', shape: [8, 2], data_offsets: [64, 128] },
  });
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, Buffer.from(header), Buffer.alloc(128)]);
})();

let dir: string;
let origin: http.Server;
let base: string;
let fake: FakeEngine;
let engine: FakeEngineAdapter;
let store: SqliteStore;
let dispatcher: LocalDispatcher;
let lifecycle: RunLifecycle;

beforeAll(async () => {
  dir = tmpDir('ks-lora-dispatch-');
  origin = http.createServer((req, res) => (req.url === '/style.safetensors' ? res.end(LORA) : res.writeHead(404).end()));
  await new Promise<void>((r) => origin.listen(0, PUBLIC, r));
  base = `http://${PUBLIC}:${(origin.address() as AddressInfo).port}`;
  const logger = pino({ level: 'silent' });
  store = new SqliteStore(path.join(dir, 'runs.db'));
  lifecycle = new RunLifecycle(store, new RunEventBus(), { maxAttempts: 3, logger });
  const objects = new DiskStore(path.join(dir, 'objects'));
  fake = new FakeEngine({ stepMs: 1 });
  engine = new FakeEngineAdapter(fake);
  engine.start();
  const fetch = { allowlist: parseAllowlist(`${PUBLIC}/32`), timeoutMs: 5000, maxBytes: 1 << 20, maxRedirects: 2 };
  const adapters = new AdapterResolver({
    cacheDir: path.join(dir, 'adapters'),
    cacheBytes: 1 << 20,
    maxBytes: 1 << 20,
    localDir: null,
    hubEndpoint: base,
    fetch,
    maxRank: () => 64,
  });
  dispatcher = new LocalDispatcher({ lifecycle, engine, objects, logger, concurrency: 2, preprocess: { objects, limits: () => engine.limits, maxInputPixels: 1 << 26, fetch, adapters } });
  dispatcher.start();
});
afterAll(async () => {
  await dispatcher?.stop(1000);
  await engine?.stop();
  await store?.close();
  origin?.close();
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(path.dirname(fake.socketPath), { recursive: true, force: true });
});

function run(id: string, loras: { path: string; scale: number }[]): RunRecord {
  return {
    id, status: 'queued', model_id: 'black-forest-labs/flux-2-klein-4b',
    input: { prompt: `run ${id}`, images: [], seed: 1, steps: 1, output_format: 'png', output_quality: 95, width: 64, height: 64, num_images: 1, loras },
    output: null, metadata: null, client_ref: null, callback_url: null, created_at: Date.now(), started_at: null, completed_at: null,
    failure_code: null, failure_message: null, failure_stage_code: null, attempts: 0, output_token: `t${id}`,
  };
}

async function terminal(id: string): Promise<RunRecord> {
  for (let i = 0; i < 500; i++) {
    const r = await store.get(id);
    if (r && isTerminal(r.status)) return r;
    await new Promise((res) => setTimeout(res, 20));
  }
  throw new Error(`run ${id} did not end`);
}

describe('LoRAs resolved at dispatch', () => {
  it('fetches the adapter and sends the engine a local file with its sha256 and the scale', async () => {
    await lifecycle.create(run('a1', [{ path: `${base}/style.safetensors`, scale: 0.7 }]));
    expect((await terminal('a1')).status).toBe('succeeded');
    const sent = fake.requests.find((h) => h.prompt === 'run a1')!.loras as { path: string; sha256: string; scale: number }[];
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatchObject({ sha256: sha256Of(LORA), scale: 0.7 });
    expect(fs.readFileSync(sent[0].path).equals(LORA)).toBe(true);
    // A run without LoRAs sends none.
    await lifecycle.create(run('a2', []));
    expect((await terminal('a2')).status).toBe('succeeded');
    expect(fake.requests.find((h) => h.prompt === 'run a2')!.loras).toBeUndefined();
  });

  it('fails the run naming input.loras[i] when the adapter cannot be fetched, without reaching the engine', async () => {
    await lifecycle.create(run('b1', [{ path: `${base}/style.safetensors`, scale: 1 }, { path: `${base}/gone.safetensors`, scale: 1 }]));
    const failed = await terminal('b1');
    expect(failed).toMatchObject({ status: 'failed', failure_code: 'LORA_FETCH_FAILED', failure_stage_code: 'preprocess' });
    expect(failed.failure_message).toMatch(/^input\.loras\[1\]\.path: unreachable: fetch failed: HTTP 404/);
    expect(fake.requests.some((h) => h.prompt === 'run b1')).toBe(false);
  });
});
