// Object store on any S3-compatible service, for clusters: api replicas and workers share it. Outputs are
// served either through the api (proxied, the default: same URLs and access rule as embedded mode) or as
// presigned GET URLs (`presign()`), which offload bytes from the api.
import { Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { assertSafeKey, type ObjectStore, type StoredKey } from './object-store.ts';
import { keyForLogs, StorageWriteError, type WriteFailureListener } from './write-failure.ts';

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, so several deployments can share one. */
  prefix?: string;
  /** Extra client settings; region/credentials/endpoint otherwise come from the usual AWS_* environment. */
  client?: S3ClientConfig;
  onWriteFailure?: WriteFailureListener;
}

export class S3Store implements ObjectStore {
  readonly client: S3Client;
  readonly bucket: string;
  private readonly prefix: string;
  private readonly onWriteFailure?: WriteFailureListener;

  constructor(opts: S3StoreOptions) {
    const endpoint = process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL;
    this.client = new S3Client({
      region: process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1',
      ...(endpoint ? { endpoint, forcePathStyle: true } : {}),
      ...opts.client,
    });
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ? opts.prefix.replace(/\/+$/, '') + '/' : '';
    this.onWriteFailure = opts.onWriteFailure;
  }

  private key(key: string): string {
    assertSafeKey(key);
    return this.prefix + key;
  }

  async put(key: string, bytes: Buffer): Promise<void> {
    const Key = this.key(key);
    try {
      // A PUT is atomic in S3: readers see the old object or the new one, never part of it.
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: bytes, ContentLength: bytes.length }));
    } catch (err) {
      // Anything a PUT meets (quota, 5xx, an unreachable endpoint, denied access) is the storage refusing.
      const failure = new StorageWriteError(keyForLogs(key), 'objects', Object.assign(new Error((err as Error)?.message), { code: s3Code(err) }));
      this.onWriteFailure?.(failure);
      throw failure;
    }
  }

  async *list(prefix: string): AsyncIterable<StoredKey> {
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.key(prefix) + '/', ContinuationToken: token }),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key) yield { key: o.Key.slice(this.prefix.length), modifiedAt: o.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
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

/** S3 names its error; a full bucket quota (MinIO's XMinioStorageFull, a provider's QuotaExceeded) reads as full. */
function s3Code(err: unknown): string {
  const e = err as { name?: string; code?: string } | null;
  const name = e?.code ?? e?.name ?? 'S3Error';
  return /StorageFull|QuotaExceeded|InsufficientStorage/i.test(name) ? 'ENOSPC' : name;
}
