// Object store on local disk: write to a temp file, then rename, so a crash never leaves half an image.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { assertSafeKey, type ObjectStore, type StoredKey } from './object-store.ts';
import { keyForLogs, StorageWriteError, type WriteFailureListener } from './write-failure.ts';

const TEMP_SUFFIX = /\.[0-9a-f]{12}\.tmp$/;

export class DiskStore implements ObjectStore {
  /**
   * `durable` adds an fsync per object. Off by default: rename alone already means a crashed process never
   * leaves a partial file, which matches SQLite's synchronous=NORMAL; fsync only adds power-loss safety
   * and costs milliseconds to tens of milliseconds per run on a busy disk.
   */
  constructor(
    readonly root: string,
    private readonly durable = false,
    private readonly onWriteFailure?: WriteFailureListener,
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
    const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      const fd = fs.openSync(tmp, 'w');
      try {
        fs.writeSync(fd, bytes);
        if (this.durable) fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, file);
    } catch (err) {
      // A full disk fails mid-write: drop the partial temp file at once so it frees its space, and the run
      // folder if this write made it (rmdir refuses a folder with anything in it). The sweeper removes
      // whatever a crash left behind.
      fs.rmSync(tmp, { force: true });
      try {
        fs.rmdirSync(path.dirname(file));
      } catch {
        // not empty, or never made
      }
      const failure = new StorageWriteError(keyForLogs(key), 'objects', err);
      this.onWriteFailure?.(failure);
      throw failure;
    }
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

  async *list(prefix: string): AsyncIterable<StoredKey> {
    for (const { file, mtimeMs } of walk(this.localPath(prefix))) {
      if (TEMP_SUFFIX.test(file)) continue;
      yield { key: path.relative(this.root, file).split(path.sep).join('/'), modifiedAt: mtimeMs };
    }
  }

  async removeTemporary(before: number): Promise<number> {
    let n = 0;
    for (const { file, mtimeMs } of walk(this.root)) {
      if (!TEMP_SUFFIX.test(file) || mtimeMs >= before) continue;
      fs.rmSync(file, { force: true });
      n++;
    }
    // Run folders left empty (by the removals above, or by a write that failed after making its folder).
    for (const top of readdir(this.root)) {
      if (!top.isDirectory()) continue;
      for (const run of readdir(path.join(this.root, top.name))) {
        const dir = path.join(this.root, top.name, run.name);
        const st = run.isDirectory() ? fs.statSync(dir, { throwIfNoEntry: false }) : undefined;
        if (!st || st.mtimeMs >= before) continue;
        try {
          fs.rmdirSync(dir);
        } catch {
          // not empty: it belongs to a run that still has objects
        }
      }
    }
    return n;
  }
}

function readdir(dir: string): fs.Dirent[] {
  try {
    return fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return []; // removed meanwhile
  }
}

/** Every file under `dir` (none if it does not exist), depth first; a folder removed mid-walk is skipped. */
function* walk(dir: string): Generator<{ file: string; mtimeMs: number }> {
  for (const e of readdir(dir)) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) yield* walk(full);
    else if (e.isFile()) {
      const st = fs.statSync(full, { throwIfNoEntry: false });
      if (st) yield { file: full, mtimeMs: st.mtimeMs };
    }
  }
}
