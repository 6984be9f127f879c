// BFL's API against the REAL server + tiny engine, driven as BFL's API reference shows: POST the task with
// x-key, poll its polling_url (with x-key) until Ready, read result.sample; the webhook (signed with
// webhook_secret); Pending / Ready / Error / Task not found; deterministic runs; BFL-shaped errors naming the field. The same
// server also answers the JSON form of OpenAI's images.edits (images: [{image_url}]), sent with the official
// `openai` package's generic post, as OpenAI's reference shows it (its images.edit helper sends multipart).
import { createHmac } from 'node:crypto';
import OpenAI from 'openai';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callbackReceiver, imageHost } from '../helpers/receivers.ts';
import { testImage } from '../helpers/images.ts';
import { imagesBatchedWithOthers } from '../helpers/engine-metrics.ts';
import { startServer, waitFor, type ServerHandle } from '../helpers/server.ts';

const KEY = 'ks_test_bfl';
let server: ServerHandle;
let host: Awaited<ReturnType<typeof imageHost>>;
let jpeg: Buffer;

beforeAll(async () => {
  server = await startServer({ apiKeys: [KEY], env: { KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1', KLEINSERVE_CALLBACK_BASE_DELAY_MS: '50' } });
  jpeg = await testImage(96, 64);
  host = await imageHost({ '/ref.png': { bytes: await testImage(64, 64, 'png'), type: 'image/png' } });
}, 180_000);
afterAll(async () => {
  await host?.close();
  await server?.dispose();
});

const headers = { accept: 'application/json', 'x-key': KEY, 'Content-Type': 'application/json' };
const create = (body: unknown) => fetch(`${server.url}/v1/flux-2-klein-4b`, { method: 'POST', headers, body: JSON.stringify(body) });

/** BFL's polling loop: GET polling_url until Ready, Error or a failure status. */
async function poll(pollingUrl: string) {
  for (;;) {
    const r = await (await fetch(pollingUrl, { headers: { accept: 'application/json', 'x-key': KEY } })).json();
    if (r.status !== 'Pending') return r;
    await new Promise((res) => setTimeout(res, 100));
  }
}

describe('BFL, as its API reference drives it', () => {
  it('create, poll until Ready, download result.sample; the run is the same run on Runflow', async () => {
    const res = await create({
      prompt: 'make it blue',
      input_image: jpeg.toString('base64'),
      input_image_2: `http://127.0.0.1:${host.port}/ref.png`,
      width: 64,
      height: 64,
      seed: 11,
      output_format: 'png',
      safety_tolerance: 2,
    });
    expect(res.status).toBe(200);
    const { id, polling_url } = await res.json();
    expect(polling_url).toBe(`${server.url}/v1/get_result?id=${id}`);
    const result = await poll(polling_url);
    expect(result).toMatchObject({ id, status: 'Ready', result: { prompt: 'make it blue', seed: 11 } });
    const sample = await fetch(result.result.sample);
    const meta = await sharp(Buffer.from(await sample.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 64, 64]);
    const run = await (await fetch(`${server.url}/v1/runs/${id}`, { headers: { authorization: `Bearer ${KEY}` } })).json();
    expect(run).toMatchObject({ id, status_code: 'succeeded', input: { width: 64, height: 64 } });
    expect(run.input.image_urls).toHaveLength(2);
  });

  it('webhook_url gets the result, signed with webhook_secret', async () => {
    const receiver = await callbackReceiver();
    try {
      const res = await create({ prompt: 'hook', input_image: jpeg.toString('base64'), webhook_url: receiver.url('/bfl'), webhook_secret: 'my-bfl-secret' });
      const { id } = await res.json();
      await waitFor(() => receiver.received.length > 0, 60_000, 'BFL webhook');
      const hook = receiver.received[0];
      expect(hook.body).toMatchObject({ id, task_id: id, status: 'Ready' });
      expect(hook.body.result.sample).toMatch(/\/v1\/outputs\//);
      expect(hook.headers['x-bfl-signature']).toBe(`sha256=${createHmac('sha256', 'my-bfl-secret').update(hook.raw).digest('hex')}`);
    } finally {
      await receiver.close();
    }
  });

  it('Error and Task not found', async () => {
    const res = await create({ prompt: 'gone', input_image: `http://127.0.0.1:${host.port}/missing.png` });
    const failed = await poll((await res.json()).polling_url);
    expect(failed.status).toBe('Error');
    expect(failed.details.code).toBe('IMAGE_FETCH_FAILED');
    const unknown = await (await fetch(`${server.url}/v1/get_result?id=nope`, { headers: { 'x-key': KEY } })).json();
    expect(unknown).toMatchObject({ id: 'nope', status: 'Task not found', result: null });
  });

  it('deterministic: true gives the same bytes alone and with runs queued beside it; a non-boolean is refused naming it', async () => {
    const det = { prompt: 'same bytes', input_image: jpeg.toString('base64'), width: 64, height: 64, seed: 21, output_format: 'png', deterministic: true };
    const bytesOf = async (body: Record<string, unknown>) => {
      const res = await create(body);
      expect(res.status).toBe(200);
      const result = await poll((await res.json()).polling_url);
      expect(result.status, JSON.stringify(result.details)).toBe('Ready');
      return { bytes: Buffer.from(await (await fetch(result.result.sample)).arrayBuffer()), id: result.id as string };
    };
    const runflowRun = async (id: string) => (await fetch(`${server.url}/v1/runs/${id}`, { headers: { authorization: `Bearer ${KEY}` } })).json();
    const alone = await bytesOf(det);
    const batchedBefore = await imagesBatchedWithOthers(server.url);
    // A larger run keeps the engine busy, so that the same-shaped runs below queue behind it and reach its batcher together.
    const busy = await (await create({ prompt: 'keep busy', width: 1024, height: 1024, seed: 7 })).json();
    await waitFor(async () => (await runflowRun(busy.id)).status_code === 'running', 60_000, 'busy run running');
    const [among] = await Promise.all([bytesOf(det), bytesOf({ ...det, deterministic: undefined, seed: 22 }), bytesOf({ ...det, deterministic: undefined, prompt: 'a neighbour' })]);
    expect((await poll(busy.polling_url)).status).toBe('Ready');
    expect((await imagesBatchedWithOthers(server.url)) - batchedBefore, 'the two neighbours batched, the deterministic run alone').toBe(2);
    expect(among.bytes.equals(alone.bytes), 'the same PNG bytes alone and among neighbours').toBe(true);
    expect((await runflowRun(among.id)).input.deterministic).toBe(true);

    const bad = await create({ ...det, deterministic: 'yes' });
    expect(bad.status).toBe(422);
    expect((await bad.json()).detail.map((d: any) => d.loc)).toEqual([['body', 'deterministic']]);
    const { components } = (await (await fetch(`${server.url}/openapi.json`)).json()) as any;
    expect(components.schemas.BflRequest.properties.deterministic).toMatchObject({ type: 'boolean', description: expect.stringContaining('byte-identical') });
  });

  it('errors carry BFL\'s detail, naming the field and the reason', async () => {
    const gap = await create({ prompt: 'x', input_image_2: jpeg.toString('base64') });
    expect(gap.status).toBe(422);
    const body = await gap.json();
    expect(body.detail[0].loc).toEqual(['body', 'input_image_2']);
    expect(body.detail[0].msg).toMatch(/in order/);

    const bad = await create({ prompt: 'x', input_image: 'not an image' });
    expect(bad.status).toBe(422);
    expect((await bad.json()).detail[0].loc).toEqual(['body', 'input_image']);

    const anon = await fetch(`${server.url}/v1/flux-2-klein-4b`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-key': 'wrong_key' }, body: '{"prompt":"x"}' });
    expect(anon.status).toBe(401);
    expect((await anon.json()).detail).toBe('invalid API key');
  });
});

describe('OpenAI images.edits, JSON form', () => {
  it('images: [{image_url}] edits like the multipart form; errors name images[i].image_url', async () => {
    const openai = new OpenAI({ apiKey: KEY, baseURL: `${server.url}/v1` });
    const res: any = await openai.post('/images/edits', {
      body: {
        model: 'black-forest-labs/flux-2-klein-4b',
        prompt: 'make it blue',
        images: [{ image_url: `data:image/jpeg;base64,${jpeg.toString('base64')}` }, { image_url: `http://127.0.0.1:${host.port}/ref.png` }],
        num_inference_steps: 1,
        output_format: 'png',
      },
    });
    const meta = await sharp(Buffer.from(res.data[0].b64_json, 'base64')).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 96, 64]);

    const refusal = (body: Record<string, unknown>) =>
      openai.post('/images/edits', { body }).then(
        () => Promise.reject(new Error('accepted')),
        (e: unknown) => e as InstanceType<typeof OpenAI.APIError> & { error: { param?: string } },
      );
    const bad = await refusal({ prompt: 'x', images: [{ image_url: 'not an image' }] });
    expect(bad.status).toBe(422);
    expect(bad.error.param).toBe('images[0].image_url');
    const fileId = await refusal({ prompt: 'x', images: [{ file_id: 'file_1' }] });
    expect(fileId.status).toBe(422);
    expect(fileId.error.param).toBe('images[0].file_id');
  });
});
