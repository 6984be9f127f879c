import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateCorpus, type CorpusManifest } from '../../scripts/hostile-corpus.js';
import { DEFAULT_DECODE_OPTIONS, decodeImage, ImageInputError, parseImageSource } from '../../src/images/index.js';

/** Each corpus file must be decoded or refused within this time, and the run must stay within this RSS growth. */
const PER_FILE_MS = 2000;
const RSS_BUDGET = 256 * 1024 * 1024;

let dir: string;
let manifest: CorpusManifest;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kleinserve-corpus-'));
  manifest = await generateCorpus(dir);
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Runs fn while sampling RSS, so a short-lived allocation peak is seen too. */
async function withPeakRss<T>(fn: () => Promise<T>): Promise<{ result: T; growth: number }> {
  const base = process.memoryUsage.rss();
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 2);
  try {
    const result = await fn();
    peak = Math.max(peak, process.memoryUsage.rss());
    return { result, growth: peak - base };
  } finally {
    clearInterval(timer);
  }
}

describe('hostile corpus through decodeImage', () => {
  it('has both kinds of entry', () => {
    expect(manifest.files.filter((f) => f.expect === 'accept').length).toBeGreaterThanOrEqual(10);
    expect(manifest.files.filter((f) => f.expect === 'refuse').length).toBeGreaterThanOrEqual(15);
  });

  it('accepts or refuses every file as the manifest says, in bounded time and memory', async () => {
    const { growth } = await withPeakRss(async () => {
      for (const entry of manifest.files) {
        const field = `input.image_urls[0] (${entry.file})`;
        const bytes = await readFile(join(dir, entry.file));
        const started = performance.now();
        const outcome = await decodeImage(bytes, field, DEFAULT_DECODE_OPTIONS).catch((e: unknown) => e);
        expect(performance.now() - started, entry.file).toBeLessThan(PER_FILE_MS);
        if (entry.expect === 'refuse') {
          expect(outcome, entry.file).toBeInstanceOf(ImageInputError);
          expect((outcome as ImageInputError).field).toBe(field);
          expect((outcome as ImageInputError).reason, entry.file).toMatch(new RegExp(entry.reason!));
          continue;
        }
        if (outcome instanceof Error) throw new Error(`${entry.file} was refused: ${outcome.message}`);
        const img = outcome as Awaited<ReturnType<typeof decodeImage>>;
        expect([img.width, img.height], entry.file).toEqual([entry.width, entry.height]);
        expect(img.rgb.length).toBe(img.width * img.height * 3);
        for (const p of entry.probes ?? []) {
          const at = (p.y * img.width + p.x) * 3;
          const got = [...img.rgb.subarray(at, at + 3)];
          got.forEach((v, i) => expect(Math.abs(v - p.rgb[i]!), `${entry.file} @${p.x},${p.y} = ${got}`).toBeLessThanOrEqual(p.tolerance));
        }
      }
    });
    expect(growth).toBeLessThan(RSS_BUDGET);
  });

  it('refuses the 50000x50000 PNG from its header, fast and without allocating its pixels', async () => {
    const bytes = await readFile(join(dir, 'bomb-50000x50000.png'));
    const started = performance.now();
    const { result, growth } = await withPeakRss(() => decodeImage(bytes, 'f', DEFAULT_DECODE_OPTIONS).catch((e: unknown) => e));
    expect(performance.now() - started).toBeLessThan(200);
    expect((result as ImageInputError).reason).toBe('image is too large: 50000x50000 = 2500.0 MP exceeds 40.0 MP');
    expect(growth).toBeLessThan(64 * 1024 * 1024);
  });

  it('refuses every source string in the manifest at parse time', async () => {
    for (const src of manifest.sources) {
      const value = await readFile(join(dir, src.file), 'utf8');
      const started = performance.now();
      let err: unknown;
      try {
        parseImageSource(value, 'input.image_urls[0]');
      } catch (e) {
        err = e;
      }
      expect(performance.now() - started, src.file).toBeLessThan(1000); // generous: a GC of the 50 MB string may land here
      expect(err, src.file).toBeInstanceOf(ImageInputError);
      expect((err as ImageInputError).reason, src.file).toMatch(new RegExp(src.reason));
    }
  });
});
