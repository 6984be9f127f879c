// Slow callback receivers against the real deliverer, the real SQLite outbox and real sockets: a receiver
// that hangs or drips is cut at the attempt's deadline, and one receiver host never holds more than its
// share of delivery slots, so an unrelated receiver's callback still goes out at once.
import fs from 'node:fs';
import type http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CallbackDeliverer } from '../../src/callbacks/delivery.ts';
import { parseAllowlist } from '../../src/images/index.ts';
import { SqliteStore } from '../../src/runs/sqlite-store.ts';
import type { RunRecord } from '../../src/runs/types.ts';
import { listen } from '../helpers/receivers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-callbacks-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

let n = 0;
async function queueCallback(store: SqliteStore, url: string): Promise<string> {
  n++;
  const id = `0190d1c5-0000-7000-8000-${String(n).padStart(12, '0')}`;
  const run: RunRecord = {
    id, status: 'queued', model_id: 'm',
    input: { prompt: 'p', images: [], seed: 1, steps: 1, output_format: 'jpeg', output_quality: 90, width: null, height: null, num_images: 1 },
    output: null, metadata: null, client_ref: null, callback_url: url, created_at: Date.now(), started_at: null, completed_at: null,
    failure_code: null, failure_message: null, failure_stage_code: null, attempts: 0, output_token: 'f'.repeat(32),
  } as RunRecord;
  await store.insert(run);
  await store.transition(id, ['queued'], { status: 'canceled', completed_at: Date.now() }, { run_id: id, url, event: 'run.cancelled', body: JSON.stringify({ run_id: id }) });
  return id;
}

/** A receiver whose sockets are all destroyed on close, so hung requests do not keep the test alive. */
async function receiver(handler: http.RequestListener, host = '127.0.0.1') {
  const sockets = new Set<import('node:net').Socket>();
  const srv = await listen(handler, host);
  srv.server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  closers.push(() => {
    for (const s of sockets) s.destroy();
    return srv.close();
  });
  return `http://${host}:${srv.port}/hook`;
}

const hanging: http.RequestListener = () => {};
/** Sends the status line, then one header byte every 100 ms, forever. */
const drippingHeaders: http.RequestListener = (_req, res) => {
  res.socket!.write('HTTP/1.1 200 OK\r\nx-drip: ');
  const t = setInterval(() => res.socket!.writable && res.socket!.write('a'), 100);
  res.socket!.on('close', () => clearInterval(t));
};
/** Answers 200 at once, then drips its body a byte every 100 ms, forever. */
const drippingBody: http.RequestListener = (_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  const t = setInterval(() => res.write('a'), 100);
  res.on('close', () => clearInterval(t));
};

function deliverer(store: SqliteStore, o: { concurrency: number; timeoutMs: number; perReceiver?: number }) {
  const d = new CallbackDeliverer({
    store,
    secret: 's',
    logger: pino({ level: 'silent' }),
    allowlist: parseAllowlist('127.0.0.0/8'),
    maxAttempts: 2,
    baseDelayMs: 60_000,
    ...o,
  });
  closers.push(async () => d.stop());
  return d;
}

const settled = async (store: SqliteStore, runId: string, timeoutMs: number) => {
  const t0 = Date.now();
  for (;;) {
    const [d] = await store.getDeliveries(runId);
    if (d.attempts > 0) return { delivery: d, ms: Date.now() - t0 };
    if (Date.now() - t0 > timeoutMs) throw new Error(`delivery for ${runId} not attempted within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('callback delivery under slow receivers', () => {
  it('cuts a hanging receiver and one that drips its headers at the attempt deadline', async () => {
    const store = new SqliteStore(path.join(dir, 'deadline.db'));
    const hang = await queueCallback(store, await receiver(hanging));
    const drip = await queueCallback(store, await receiver(drippingHeaders));
    deliverer(store, { concurrency: 4, perReceiver: 4, timeoutMs: 800 }).start();
    for (const id of [hang, drip]) {
      const { delivery, ms } = await settled(store, id, 5000);
      expect(delivery.state).toBe('pending'); // failed attempt, retry scheduled
      expect(delivery.last_error).toMatch(/no complete answer within 800 ms/);
      expect(ms).toBeLessThan(800 + 1500);
    }
    await store.close();
  });

  it('counts a 200 whose body drips as delivered without waiting for the body', async () => {
    const store = new SqliteStore(path.join(dir, 'body.db'));
    const id = await queueCallback(store, await receiver(drippingBody));
    deliverer(store, { concurrency: 2, timeoutMs: 5000 }).start();
    const { delivery, ms } = await settled(store, id, 4000);
    expect(delivery.state).toBe('delivered');
    expect(ms).toBeLessThan(2000);
    await store.close();
  });

  it('keeps one receiver host to its share of slots; another receiver is served at once', async () => {
    const store = new SqliteStore(path.join(dir, 'fair.db'));
    // Eight hung deliveries to one host (several ports), all due before the unrelated one.
    const hogs: string[] = [];
    for (let i = 0; i < 8; i++) hogs.push(await queueCallback(store, await receiver(i % 2 ? hanging : drippingHeaders)));
    let arrived = 0;
    const other = await queueCallback(
      store,
      await receiver((_req, res) => {
        arrived = Date.now();
        res.writeHead(204).end();
      }, '127.0.0.2'),
    );
    const d = deliverer(store, { concurrency: 4, timeoutMs: 4000 });
    let maxHeld = 0;
    const sampler = setInterval(() => (maxHeld = Math.max(maxHeld, d.holders().get('127.0.0.1') ?? 0)), 10);
    closers.push(async () => clearInterval(sampler));
    const t0 = Date.now();
    d.start();
    const { delivery } = await settled(store, other, 3000);
    expect(delivery.state).toBe('delivered');
    expect(arrived - t0).toBeLessThan(1500); // not behind the hung attempts' 4 s deadline
    await new Promise((r) => setTimeout(r, 300));
    expect(maxHeld).toBe(1); // a quarter of 4 slots
    expect(hogs.length).toBe(8);
    await store.close();
  });
});
