// Object store on local disk: write to a temp file, then rename, so a crash never leaves half an image.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { assertSafeKey, type ObjectStore } from './object-store.ts';

export class DiskStore implements ObjectStore {
  /**
   * `durable` adds an fsync per object. Off by default: rename alone already means a crashed process never
   * leaves a partial file, which matches SQLite's synchronous=NORMAL; fsync only adds power-loss safety
   * and costs milliseconds to tens of milliseconds per run on a busy disk.
   */
  constructor(
    readonly root: string,
    private readonly durable = false,
  ) {
    fs.mkdirSync(root, { recursive: true });
  }

  localPath(key: string): string {
    assertSafeKey(key);
    return path.join(this.root, key);
  }

  /**
   * Synchronous on purpose: objects here are small (an input reference or an encoded output), and on a
   * loaded 2-core machine each libuv thread-pool hop of the async version (open, write, close, rename)
   * costs more waiting than the blocking syscalls themselves.
   */
  async put(key: string, bytes: Buffer): Promise<void> {
    const file = this.localPath(key);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, bytes);
      if (this.durable) fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  }

  get(key: string): Promise<Buffer> {
    return fsp.readFile(this.localPath(key));
  }

  async stream(key: string, range?: { start: number; end: number }): Promise<Readable> {
    return fs.createReadStream(this.localPath(key), range);
  }

  async exists(key: string): Promise<boolean> {
    return fsp.access(this.localPath(key)).then(
      () => true,
      () => false,
    );
  }

  async delete(key: string): Promise<void> {
    await fsp.rm(this.localPath(key), { force: true });
  }
}
