// The SDK against the REAL server and the tiny engine (server/test/helpers/server.ts starts it).
import { createServer, request as httpRequest, type Server } from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '../../server/test/helpers/server.ts';
import { testImage } from '../../server/test/helpers/images.ts';
import { Kleinserve, KleinserveError, RunFailedError, type RunEvent } from '../src/index.js';

const KEY = 'ks_test_sdk';
let server: ServerHandle;
let client: Kleinserve;

beforeAll(async () => {
  server = await startServer({ apiKeys: [KEY] });
  client = new Kleinserve({ baseUrl: server.url, apiKey: KEY, retryDelayMs: 20 });
});
afterAll(async () => server?.stop());

async function runsWithRef(ref: string): Promise<number> {
  const res = await fetch(`${server.url}/v1/runs?limit=100`, { headers: { authorization: `Bearer ${KEY}` } });
  // Runflow's list shape is {items, next_pq}; older servers answered {data}.
  const list = (await res.json()) as { items?: { client_ref: string | null }[]; data?: { client_ref: string | null }[] };
  return (list.items ?? list.data ?? []).filter((r) => r.client_ref === ref).length;
}

describe('client.edit', () => {
  it('takes a Buffer, a file path and a data URI, and returns the finished run with the image bytes and live steps', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-sdk-'));
    const file = path.join(dir, 'b.png');
    fs.writeFileSync(file, await testImage(128, 96, 'png'));
    const dataUri = `data:image/jpeg;base64,${(await testImage(96, 96)).toString('base64')}`;
    const events: RunEvent[] = [];
    const { run, images } = await client.edit(
      { prompt: 'make it blue', images: [await testImage(128, 96), file, dataUri], steps: 3, seed: 42 },
      { onProgress: (e) => events.push(e) },
    );
    expect(run.status_code).toBe('succeeded');
    expect(run.output!.seed).toBe(42);
    expect(run.input.image_urls).toHaveLength(3);
    expect(images).toHaveLength(1);
    const meta = await sharp(Buffer.from(images[0])).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', run.output!.outputs[0].width, run.output!.outputs[0].height]);
    const steps = events.filter((e) => e.type === 'progress').map((e) => (e as { step: number }).step);
    expect(steps.at(-1)).toBe(3);
    expect(events.at(-1)!.type).toBe('run');
  });

  it('generate() runs text-to-image with several outputs', async () => {
    const { run, images } = await client.generate({ prompt: 'a boat', num_images: 2, width: 128, height: 128, steps: 2 });
    expect(run.model_id).toBe('black-forest-labs/flux-2-klein-4b');
    expect(images).toHaveLength(2);
  });
});

describe('runs.*', () => {
  it('create, get, stream and wait agree on one run', async () => {
    const img = await testImage(96, 64);
    const created = await client.runs.create({ input: { prompt: 'p', image_urls: [`data:image/jpeg;base64,${img.toString('base64')}`], steps: 2 }, metadata: { who: 'sdk-test' } });
    expect(created.status_code).toBe('queued');
    expect(created.client_ref).toBeNull();
    const kinds: string[] = [];
    for await (const ev of client.runs.stream(created.id)) kinds.push(ev.type);
    expect(kinds.at(-1)).toBe('run');
    const waited = await client.runs.wait(created.id);
    const got = await client.runs.get(created.id);
    expect(waited.status_code).toBe('succeeded');
    expect(got).toEqual(waited);
    expect(got.metadata).toEqual({ who: 'sdk-test' });
  });

  it('cancel stops a queued or running run; result() then throws RunFailedError', async () => {
    const img = await testImage(512, 512);
    const uri = `data:image/jpeg;base64,${img.toString('base64')}`;
    const created = await client.runs.create({ input: { prompt: 'long', image_urls: [uri], steps: 50 } });
    const canceled = await client.runs.cancel(created.id);
    expect(['canceled', 'succeeded']).toContain(canceled.status_code);
    const final = await client.runs.wait(created.id);
    expect(final.status_code).toBe(canceled.status_code);
    if (final.status_code === 'canceled') await expect(client.runs.result(created.id)).rejects.toBeInstanceOf(RunFailedError);
  });
});

describe('errors, retries and failover', () => {
  it('raises typed errors carrying code and errors[] naming the image', async () => {
    const err = await client.edit({ prompt: 'x', images: [await testImage(96, 96), await testImage(8, 8, 'png')] }).catch((e) => e);
    expect(err).toBeInstanceOf(KleinserveError);
    expect(err.status).toBe(422);
    expect(err.code).toBe('INPUT_VALIDATION_FAILED');
    expect(err.errors.map((e: { field: string }) => e.field)).toContain('input.image_urls[1]');

    const unauth = await new Kleinserve({ baseUrl: server.url, apiKey: 'wrong_key' }).runs.get('x').catch((e) => e);
    expect(unauth).toBeInstanceOf(KleinserveError);
    expect(unauth.code).toBe('UNAUTHORIZED');
  });

  it('fails over from a dead base URL to the next one in order', async () => {
    const dead = createServer((req) => req.socket.destroy());
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const deadUrl = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
    try {
      const multi = new Kleinserve({ baseUrl: [deadUrl, server.url], apiKey: KEY, retryDelayMs: 10 });
      const { run } = await multi.edit({ prompt: 'failover', images: [await testImage(96, 64)], steps: 1 });
      expect(run.status_code).toBe('succeeded');
    } finally {
      dead.close();
    }
  });

  it('retries a create whose answer was lost without creating a second run', async () => {
    // A proxy that forwards the first create to the real server, then drops the answer on the floor.
    let creates = 0;
    const proxy: Server = createServer((req, res) => {
      const upstream = new URL(req.url!, server.url);
      const isCreate = req.method === 'POST' && req.url!.endsWith('/runs');
      if (isCreate) creates++;
      const up = httpRequest(upstream, { method: req.method, headers: req.headers }, (upRes) => {
        if (isCreate && creates === 1) { upRes.resume(); upRes.on('end', () => req.socket.destroy()); return; }
        res.writeHead(upRes.statusCode!, upRes.headers);
        upRes.pipe(res);
      });
      req.pipe(up);
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    try {
      const via = new Kleinserve({ baseUrl: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`, apiKey: KEY, retryDelayMs: 10 });
      const ref = `ref_${Date.now()}`;
      const { run } = await via.edit({ prompt: 'once', images: [await testImage(96, 64)], steps: 1 }, { client_ref: ref });
      expect(creates).toBe(2);
      expect(run.client_ref).toBe(ref);
      expect(await runsWithRef(ref)).toBe(1);
    } finally {
      proxy.close();
    }
  });
});
