// Where run inputs and outputs live. Embedded mode uses local disk; cluster mode adds S3 behind this interface.
import type { Readable } from 'node:stream';

export interface ObjectStore {
  /** Writes atomically: readers see the old object or the whole new one, never a partial file. */
  put(key: string, bytes: Buffer): Promise<void>;
  get(key: string): Promise<Buffer>;
  stream(key: string, range?: { start: number; end: number }): Promise<Readable>;
  exists(key: string): Promise<boolean>;
  delete(key: string): Promise<void>;
  /** Absolute path when the object is a local file (lets the output route use sendFile for Range/ETag). */
  localPath?(key: string): string;
}

const SAFE_KEY = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;

export function assertSafeKey(key: string): void {
  if (!SAFE_KEY.test(key) || key.includes('..')) throw new Error(`unsafe object key ${JSON.stringify(key)}`);
}
