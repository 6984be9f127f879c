// The disk cache of downloaded adapters and the header check, on real files: bounded in bytes with the least
// recently used file evicted first, found again after a restart, and each refusal the header can tell.
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { AdapterCache, AdapterCacheMetrics, sha256Of } from '../../src/adapters/cache.ts';
import { inspectLora } from '../../src/adapters/safetensors.ts';
import { LoraRefusal, parseLoraSource } from '../../src/adapters/source.ts';
import { tmpDir } from '../helpers/server.ts';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
const cacheDir = () => {
  const d = tmpDir('ks-lora-cache-');
  dirs.push(d);
  return d;
};

/** A safetensors file holding the given tensors' headers (the data is zeros). */
function safetensors(tensors: Record<string, number[]>): Buffer {
  let offset = 0;
  const header: Record<string, unknown> = {};
  for (const [k, shape] of Object.entries(tensors)) {
    const n = shape.reduce((a, b) => a * b, 1) * 4;
    header[k] = { dtype: 'F32', shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(offset)]);
}

const lora = (rank: number, tag = 'a') =>
  safetensors({ [`transformer.${tag}.to_q.lora_A.weight`]: [rank, 8], [`transformer.${tag}.to_q.lora_B.weight`]: [8, rank] });

describe('adapter disk cache', () => {
  it('keeps the bytes within its bound, evicting the least recently used first, and counts it', async () => {
    const dir = cacheDir();
    const registry = new Registry();
    const [a, b, c] = ['a', 'b', 'c'].map((t) => lora(4, t));
    const cache = new AdapterCache(dir, a.length + b.length + 10, new AdapterCacheMetrics(registry));
    const ea = await cache.put(a);
    const eb = await cache.put(b);
    expect(ea.sha256).toBe(sha256Of(a));
    expect(fs.readFileSync(ea.path).equals(a)).toBe(true);
    expect(cache.get(ea.sha256)).not.toBeNull(); // a is now the most recent: b goes first
    await cache.put(c);
    expect(cache.get(eb.sha256)).toBeNull();
    expect(fs.existsSync(eb.path)).toBe(false);
    expect(cache.get(ea.sha256)?.path).toBe(ea.path);
    const text = await registry.metrics();
    expect(text).toMatch(/^kleinserve_lora_cache_evictions_total 1$/m);
    expect(text).toMatch(new RegExp(`^kleinserve_lora_cache_bytes ${a.length + c.length}$`, 'm'));
    // A new process finds the files it left.
    const again = new AdapterCache(dir, 1 << 20, new AdapterCacheMetrics());
    expect(again.get(ea.sha256)).not.toBeNull();
  });
});

describe('adapter header and name checks', () => {
  const reason = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      if (err instanceof LoraRefusal) return err.reason;
      throw err;
    }
    return null;
  };

  it('tells a LoRA, its rank, and what is not one', () => {
    expect(inspectLora(lora(16), 'f', 64)).toEqual({ pairs: 1, rank: 16 });
    expect(reason(() => inspectLora(lora(16), 'f', 8))).toBe('rank_too_large');
    expect(reason(() => inspectLora(Buffer.from('<html>'), 'f', 64))).toBe('not_a_lora');
    expect(reason(() => inspectLora(safetensors({ 'model.weight': [4, 4] }), 'f', 64))).toBe('not_a_lora');
  });

  it('parses each form of path and refuses traversal', () => {
    expect(parseLoraSource('acme/style', 'f')).toEqual({ kind: 'hub', repo: 'acme/style', file: null });
    expect(parseLoraSource('acme/style:sub/x.safetensors', 'f')).toEqual({ kind: 'hub', repo: 'acme/style', file: 'sub/x.safetensors' });
    expect(parseLoraSource('https://h.example/x.safetensors', 'f').kind).toBe('url');
    expect(parseLoraSource('my_style', 'f')).toEqual({ kind: 'local', name: 'my_style' });
    for (const bad of ['../x', '..', 'a/../b', 'acme/style:../x.safetensors', 'file:///etc/passwd', '/etc/passwd', 'acme/style:x.bin']) {
      expect(reason(() => parseLoraSource(bad, 'f')), bad).toBe('invalid');
    }
  });
});
