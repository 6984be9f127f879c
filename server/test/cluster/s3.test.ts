// The S3 object store against a real S3-compatible server on loopback (moto's server mode, from PyPI),
// then a cluster (api + worker) on it: inputs reach the worker by reference through the bucket, and
// outputs are served by the api (proxied) and by presigned URLs.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { CreateBucketCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store } from '../../src/storage/s3-store.ts';
import { dataUri, testImage } from '../helpers/images.ts';
import { Api, waitFor } from '../helpers/server.ts';
import { API_KEY, assertImage, freePort, RedisServer, startApi, startWorker, TestDatabase, waitWorkers, type ApiProc, type Proc } from './harness.ts';

const MOTO = path.resolve(import.meta.dirname, '../../../.venv/bin/moto_server');
const S3_ENV = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1' };

let moto: ChildProcess;
let endpoint: string;
let store: S3Store;
const bucket = 'kleinserve-test';

beforeAll(async () => {
  const port = await freePort();
  endpoint = `http://127.0.0.1:${port}`;
  moto = spawn(MOTO, ['-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  await waitFor(() => fetch(endpoint).then(() => true, () => false), 30_000, 'moto server');
  Object.assign(process.env, S3_ENV, { AWS_ENDPOINT_URL_S3: endpoint });
  store = new S3Store({ bucket, prefix: 'ks' });
  await store.client.send(new CreateBucketCommand({ Bucket: bucket }));
}, 60_000);

afterAll(() => {
  moto?.kill('SIGKILL');
});

describe('S3 object store (moto server)', () => {
  it('puts, gets, streams ranges, checks, presigns and deletes objects', async () => {
    const bytes = Buffer.from('0123456789abcdef');
    await store.put('outputs/run-1/a.png', bytes);
    expect(await store.exists('outputs/run-1/a.png')).toBe(true);
    expect(await store.get('outputs/run-1/a.png')).toEqual(bytes);
    const chunks: Buffer[] = [];
    for await (const c of await store.stream('outputs/run-1/a.png', { start: 2, end: 5 })) chunks.push(Buffer.from(c));
    expect(Buffer.concat(chunks).toString()).toBe('2345');
    const signed = await store.presign('outputs/run-1/a.png', 60);
    expect(Buffer.from(await (await fetch(signed)).arrayBuffer())).toEqual(bytes);
    // The prefix keeps deployments apart inside one bucket.
    const listed = await store.client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'ks/outputs/' }));
    expect(listed.Contents?.map((o) => o.Key)).toEqual(['ks/outputs/run-1/a.png']);
    await store.delete('outputs/run-1/a.png');
    expect(await store.exists('outputs/run-1/a.png')).toBe(false);
    await expect(store.get('outputs/run-1/a.png')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(store.put('../escape', bytes)).rejects.toThrow(/unsafe object key/);
  });

  describe('a cluster on s3:// storage', () => {
    let db: TestDatabase;
    let redis: RedisServer;
    let api: ApiProc;
    let worker: Proc;

    beforeAll(async () => {
      [db, redis] = await Promise.all([TestDatabase.create('ks_s3'), RedisServer.start()]);
      const env = { ...S3_ENV, AWS_ENDPOINT_URL_S3: endpoint };
      const storage = `s3://${bucket}/cluster`;
      api = await startApi({ db, regions: [['main', redis]], storage, env });
      worker = await startWorker({ db, region: 'main', redis, storage, env, concurrency: 1 });
      await waitWorkers(api, 'main', 1);
    }, 180_000);

    afterAll(async () => {
      await Promise.all([api?.stop(), worker?.stop()].map((p) => p?.catch(() => {})));
      await redis?.down();
      await db?.drop();
    });

    it('passes the input by reference through the bucket and serves the output through the api', async () => {
      const client = new Api(api.url, API_KEY);
      const input = await testImage(96, 64, 'png');
      const res = await client.create({ input: { prompt: 'on s3', image_urls: [dataUri(input, 'image/png')], steps: 1, seed: 3 } }, { prefer: 'wait=120' });
      expect(res.status).toBe(200);
      expect(res.body.status_code).toBe('succeeded');
      const id = res.body.id as string;
      const reader = new S3Store({ bucket, prefix: 'cluster' });
      // The worker got only the run id through Redis; the bytes it decoded came from the bucket.
      expect(await reader.get(`inputs/${id}/0`)).toEqual(input);
      const url = res.body.output.outputs[0].url as string;
      await assertImage(url, 96, 64);
      const key = new URL(url).pathname.replace('/v1/', '');
      expect(await reader.exists(key)).toBe(true);
      expect((await fetch(url.replace(/\w+\.jpg$/, '0'.repeat(32) + '.jpg'))).status).toBe(404);
    }, 180_000);
  });
});
