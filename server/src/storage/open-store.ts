// `--storage file:DIR | s3://BUCKET[/PREFIX]` -> an ObjectStore (S3 settings from the usual AWS_* environment).
import path from 'node:path';
import { DiskStore } from './disk-store.ts';
import type { ObjectStore } from './object-store.ts';
import { S3Store } from './s3-store.ts';
import type { WriteFailureListener } from './write-failure.ts';

export function openObjectStore(spec: string, fsync = false, onWriteFailure?: WriteFailureListener): ObjectStore {
  if (spec.startsWith('file:')) {
    const dir = spec.slice('file:'.length);
    if (!dir) throw new Error('--storage file:DIR needs a directory');
    return new DiskStore(path.resolve(dir), fsync, onWriteFailure);
  }
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(spec);
  if (m) return new S3Store({ bucket: m[1], prefix: m[2] || undefined, onWriteFailure });
  throw new Error(`--storage ${JSON.stringify(spec)}: expected file:DIR or s3://BUCKET[/PREFIX]`);
}
