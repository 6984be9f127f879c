// Downloaded adapters on disk, named by the sha256 of their bytes, bounded in bytes: the least recently
// used files go first when a new one would cross the bound. Survives restarts (the directory is the index).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Counter, Gauge, type Registry } from 'prom-client';

export interface CachedAdapter {
  path: string;
  sha256: string;
  bytes: number;
}

export class AdapterCacheMetrics {
  readonly hits: Counter;
  readonly misses: Counter;
  readonly evictions: Counter;
  readonly bytes: Gauge;
  readonly entries: Gauge;

  constructor(registry?: Registry) {
    const registers = registry ? [registry] : [];
    this.hits = new Counter({ name: 'kleinserve_lora_cache_hits_total', help: 'LoRA adapters found in the disk cache', registers });
    this.misses = new Counter({ name: 'kleinserve_lora_cache_misses_total', help: 'LoRA adapters fetched because the disk cache lacked them', registers });
    this.evictions = new Counter({ name: 'kleinserve_lora_cache_evictions_total', help: 'LoRA adapters removed to stay within the byte bound', registers });
    this.bytes = new Gauge({ name: 'kleinserve_lora_cache_bytes', help: 'Bytes of LoRA adapters in the disk cache', registers });
    this.entries = new Gauge({ name: 'kleinserve_lora_cache_entries', help: 'LoRA adapters in the disk cache', registers });
  }
}

export const sha256Of = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

export class AdapterCache {
  /** sha256 -> size, in least-recently-used-first order (a Map keeps insertion order; a use re-inserts). */
  private readonly entries = new Map<string, number>();
  private total = 0;

  constructor(
    private readonly dir: string,
    private readonly maxBytes: number,
    readonly metrics: AdapterCacheMetrics,
  ) {
    fs.mkdirSync(dir, { recursive: true });
    const found = fs
      .readdirSync(dir)
      .filter((f) => /^[0-9a-f]{64}\.safetensors$/.test(f))
      .map((f) => ({ sha: f.slice(0, 64), st: fs.statSync(path.join(dir, f)) }))
      .sort((a, b) => a.st.mtimeMs - b.st.mtimeMs);
    for (const { sha, st } of found) this.add(sha, st.size);
    for (const f of fs.readdirSync(dir)) if (f.endsWith('.part')) fs.rmSync(path.join(dir, f), { force: true });
    this.evict(null);
  }

  fileOf(sha: string): string {
    return path.join(this.dir, `${sha}.safetensors`);
  }

  /** The cached file with this hash, marked as just used; null when absent (or removed behind our back). */
  get(sha: string): CachedAdapter | null {
    const size = this.entries.get(sha);
    if (size === undefined) return null;
    const file = this.fileOf(sha);
    if (!fs.existsSync(file)) {
      this.remove(sha);
      return null;
    }
    this.entries.delete(sha);
    this.entries.set(sha, size);
    const now = new Date();
    fs.utimes(file, now, now, () => {});
    return { path: file, sha256: sha, bytes: size };
  }

  /** Stores `bytes` under their hash (written aside, then renamed in), evicting older files past the bound. */
  async put(bytes: Buffer): Promise<CachedAdapter> {
    const sha = sha256Of(bytes);
    const have = this.get(sha);
    if (have) return have;
    const file = this.fileOf(sha);
    const part = `${file}.${process.pid}.${Date.now()}.part`;
    await fs.promises.writeFile(part, bytes);
    await fs.promises.rename(part, file);
    this.add(sha, bytes.length);
    this.evict(sha);
    return { path: file, sha256: sha, bytes: bytes.length };
  }

  private add(sha: string, size: number): void {
    this.entries.set(sha, size);
    this.total += size;
    this.report();
  }

  private remove(sha: string): void {
    const size = this.entries.get(sha);
    if (size === undefined) return;
    this.entries.delete(sha);
    this.total -= size;
    this.report();
  }

  /** Oldest first until within the bound; `keep` (the file just added) stays even if it alone is over it. */
  private evict(keep: string | null): void {
    for (const sha of [...this.entries.keys()]) {
      if (this.total <= this.maxBytes) break;
      if (sha === keep) continue;
      fs.rmSync(this.fileOf(sha), { force: true });
      this.remove(sha);
      this.metrics.evictions.inc();
    }
  }

  private report(): void {
    this.metrics.bytes.set(this.total);
    this.metrics.entries.set(this.entries.size);
  }
}
