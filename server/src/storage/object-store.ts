// Where run inputs and outputs live. Embedded mode uses local disk; cluster mode adds S3 behind this interface.
import type { Readable } from 'node:stream';

export interface ObjectStore {
  /**
   * Writes atomically: readers see the old object or the whole new one, never a partial file. A write the
   * storage refuses (full, failing, unreachable) throws a StorageWriteError naming the key.
   */
  put(key: string, bytes: Buffer): Promise<void>;
  get(key: string): Promise<Buffer>;
  stream(key: string, range?: { start: number; end: number }): Promise<Readable>;
  exists(key: string): Promise<boolean>;
  delete(key: string): Promise<void>;
  /** Every stored object under `prefix` (temporary files excluded), so the sweeper can find those no run owns. */
  list?(prefix: string): AsyncIterable<StoredKey>;
  /**
   * Removes temporary files older than `before` (epoch ms) that an interrupted write left, and folders
   * left empty; returns how many files.
   */
  removeTemporary?(before: number): Promise<number>;
  /** Absolute path when the object is a local file (lets the output route use sendFile for Range/ETag). */
  localPath?(key: string): string;
}

export interface StoredKey {
  key: string;
  /** Last-modified time, epoch ms. */
  modifiedAt: number;
}

const SAFE_KEY = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*$/;

export function assertSafeKey(key: string): void {
  if (!SAFE_KEY.test(key) || key.includes('..')) throw new Error(`unsafe object key ${JSON.stringify(key)}`);
}
