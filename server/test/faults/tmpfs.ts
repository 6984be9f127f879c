// A tiny tmpfs volume for full-disk tests: mounted over a fresh directory (needs root, as in CI's
// container), filled on demand with a ballast file, and freed again to show recovery.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface TinyVolume {
  dir: string;
  /** Fills the volume to the last byte (a ballast file); returns the bytes written. */
  fill(): number;
  /** Removes the ballast, giving the space back. */
  free(): void;
  unmount(): void;
}

/**
 * Mounts a tmpfs of `sizeBytes` over a fresh directory (or over `at`, created if missing, e.g. inside
 * another tiny volume), or returns the reason it cannot.
 */
export function mountTinyVolume(sizeBytes: number, at?: string): TinyVolume | string {
  const dir = at ?? fs.mkdtempSync(path.join(os.tmpdir(), 'ks-tmpfs-'));
  fs.mkdirSync(dir, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes}`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (err) {
    fs.rmdirSync(dir);
    return `cannot mount a tmpfs (${String((err as { stderr?: Buffer }).stderr ?? err).trim()}); these tests need root in a container that allows mount`;
  }
  const ballast = path.join(dir, 'ballast');
  return {
    dir,
    fill() {
      const fd = fs.openSync(ballast, 'a');
      const chunk = Buffer.alloc(64 * 1024, 7);
      let total = 0;
      try {
        for (;;) total += fs.writeSync(fd, chunk);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      }
      // The last partial chunk: byte by byte until not even one fits.
      try {
        for (;;) total += fs.writeSync(fd, chunk, 0, 1);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      } finally {
        fs.closeSync(fd);
      }
      return total;
    },
    free() {
      fs.rmSync(ballast, { force: true });
    },
    unmount() {
      try {
        execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
