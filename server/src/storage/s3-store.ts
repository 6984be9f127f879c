// Object store on any S3-compatible service, for clusters: api replicas and workers share it. Outputs are
// served either through the api (proxied, the default: same URLs and access rule as embedded mode) or as
// presigned GET URLs (`presign()`), which offload bytes from the api.
import { Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { assertSafeKey, type ObjectStore } from './object-store.ts';

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, so several deployments can share one. */
  prefix?: string;
  /** Extra client settings; region/credentials/endpoint otherwise come from the usual AWS_* environment. */
  client?: S3ClientConfig;
}

export class S3Store implements ObjectStore {
  readonly client: S3Client;
  readonly bucket: string;
  private readonly prefix: string;

  constructor(opts: S3StoreOptions) {
    const endpoint = process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL;
    this.client = new S3Client({
      region: process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1',
      ...(endpoint ? { endpoint, forcePathStyle: true } : {}),
      ...opts.client,
    });
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ? opts.prefix.replace(/\/+$/, '') + '/' : '';
  }

  private key(key: string): string {
    assertSafeKey(key);
    return this.prefix + key;
  }

  async put(key: string, bytes: Buffer): Promise<void> {
    // A PUT is atomic in S3: readers see the old object or the new one, never part of it.
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key(key), Body: bytes, ContentLength: bytes.length }));
  }

  async get(key: string): Promise<Buffer> {
    const res = await this.send404(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(key) }), key);
    return Buffer.from(await res.Body!.transformToByteArray());
  }

  async stream(key: string, range?: { start: number; end: number }): Promise<Readable> {
    const res = await this.send404(
      new GetObjectCommand({ Bucket: this.bucket, Key: this.key(key), Range: range ? `bytes=${range.start}-${range.end}` : undefined }),
      key,
    );
    return res.Body as Readable;
  }

  async exists(key: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(key) }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(key) }));
  }

  /** A time-limited GET URL for the object, for serving outputs straight from the bucket. */
  presign(key: string, expiresInSeconds = 3600): Promise<string> {
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: this.key(key) }), { expiresIn: expiresInSeconds });
  }

  private async send404(cmd: GetObjectCommand, key: string) {
    try {
      return await this.client.send(cmd);
    } catch (err) {
      if (isNotFound(err)) throw Object.assign(new Error(`object ${key} not found`), { code: 'ENOENT' });
      throw err;
    }
  }
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === 'NoSuchKey' || e.name === 'NotFound' || e.$metadata?.httpStatusCode === 404;
}
