import fc from 'fast-check';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { DEFAULT_DECODE_OPTIONS, decodeImage, fitWithin, ImageInputError, type DecodeOptions } from '../../src/images/index.js';

const FIELD = 'input.image_urls[3]';
const OPTS: DecodeOptions = { ...DEFAULT_DECODE_OPTIONS };

const png = (width: number, height: number, background = '#336699') =>
  sharp({ create: { width, height, channels: 3, background } }).png().toBuffer();

async function refusal(bytes: Buffer, opts = OPTS): Promise<string> {
  const err = await decodeImage(bytes, FIELD, opts).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ImageInputError);
  expect((err as ImageInputError).field).toBe(FIELD);
  return (err as ImageInputError).reason;
}

describe('decodeImage: geometry rules', () => {
  it('outputs raw 8-bit RGB of width*height*3 bytes', async () => {
    const out = await decodeImage(await png(100, 70), FIELD, OPTS);
    expect(out).toMatchObject({ width: 100, height: 70, format: 'png' });
    expect(out.rgb.length).toBe(100 * 70 * 3);
    expect([...out.rgb.subarray(0, 3)]).toEqual([0x33, 0x66, 0x99]);
  });

  it('accepts the minimum side exactly and refuses one pixel less', async () => {
    await expect(decodeImage(await png(64, 64), FIELD, OPTS)).resolves.toMatchObject({ width: 64, height: 64 });
    expect(await refusal(await png(63, 200))).toBe('image is too small: 63x200, each side must be at least 64 px');
  });

  it('accepts the maximum aspect exactly and refuses beyond it', async () => {
    await expect(decodeImage(await png(512, 64), FIELD, OPTS)).resolves.toMatchObject({ width: 512, height: 64 });
    expect(await refusal(await png(64, 520))).toBe('aspect ratio 8.1 exceeds 8');
  });

  it('refuses more declared pixels than maxInputPixels before decoding', async () => {
    const reason = await refusal(await png(3000, 2000), { ...OPTS, maxInputPixels: 5_000_000 });
    expect(reason).toBe('image is too large: 3000x2000 = 6.0 MP exceeds 5.0 MP');
  });

  it('never upscales', async () => {
    await expect(decodeImage(await png(80, 80), FIELD, { ...OPTS, maxRefPixels: 4_000_000 })).resolves.toMatchObject({
      width: 80,
      height: 80,
    });
  });

  it('downscales with Lanczos3 to at most maxRefPixels, keeping the aspect', async () => {
    // Stripes make the kernel visible: lanczos3 output differs from nearest-neighbour.
    const raw = Buffer.alloc(1600 * 400 * 3);
    for (let i = 0; i < 1600 * 400; i++) raw.fill(i % 3 === 0 ? 255 : 0, i * 3, i * 3 + 3);
    const bytes = await sharp(raw, { raw: { width: 1600, height: 400, channels: 3 } }).png().toBuffer();
    const out = await decodeImage(bytes, FIELD, { ...OPTS, maxRefPixels: 160_000 });
    expect([out.width, out.height]).toEqual([800, 200]);
    const resize = (kernel: 'lanczos3' | 'nearest') =>
      sharp(bytes).resize(800, 200, { kernel, fit: 'fill' }).raw().toBuffer();
    expect(out.rgb.equals(await resize('lanczos3'))).toBe(true);
    expect(out.rgb.equals(await resize('nearest'))).toBe(false);
  });

  it('fitWithin never exceeds the budget or the input and keeps the aspect within a pixel', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 20000 }), fc.integer({ min: 1, max: 20000 }), fc.integer({ min: 4096, max: 4_000_000 }), (w, h, max) => {
        const out = fitWithin(w, h, max);
        expect(out.width * out.height).toBeLessThanOrEqual(Math.max(max, 1));
        expect(out.width).toBeLessThanOrEqual(w);
        expect(out.height).toBeLessThanOrEqual(h);
        if (w * h <= max) expect(out).toEqual({ width: w, height: h });
        else if (Math.min(out.width, out.height) > 8) {
          expect(Math.abs(out.width / out.height - w / h) / (w / h)).toBeLessThan(0.2);
          expect(out.width * out.height).toBeGreaterThan(max * 0.9);
        }
      }),
    );
  });
});

describe('decodeImage: format gate', () => {
  it('never lets sharp render SVG, even when it claims to be a PNG elsewhere', async () => {
    expect(await refusal(Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"/>'))).toMatch(/SVG/);
    expect(await refusal(Buffer.from('\n\n  <svg width="100" height="100"></svg>'))).toMatch(/SVG/);
  });

  it('refuses formats sharp could read but we do not accept', async () => {
    const jp2OrRaw = Buffer.from('P6\n100 100\n255\n' + 'x'.repeat(30000)); // PPM
    expect(await refusal(jp2OrRaw)).toMatch(/text is not an image|unrecognised/);
    const bmp = Buffer.concat([Buffer.from('BM'), Buffer.alloc(200)]);
    expect(await refusal(bmp)).toMatch(/unrecognised/);
  });

  it('accepts a PNG carrying ordinary XMP metadata (not a polyglot)', async () => {
    const bytes = await sharp(await png(96, 96))
      .withXmp('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>')
      .png()
      .toBuffer();
    await expect(decodeImage(bytes, FIELD, OPTS)).resolves.toMatchObject({ width: 96 });
  });

  it('applies a configurable metadata cap', async () => {
    const bytes = await sharp(await png(96, 96)).withExif({ IFD0: { ImageDescription: 'x'.repeat(5000) } }).jpeg().toBuffer();
    await expect(decodeImage(bytes, FIELD, OPTS)).resolves.toMatchObject({ width: 96 });
    expect(await refusal(bytes, { ...OPTS, maxMetadataBytes: 1000 })).toMatch(/metadata .*too large/);
  });
});

describe('decodeImage: mutation fuzzing', () => {
  it('either decodes to well-formed RGB or refuses with ImageInputError, for corrupted files of every format', async () => {
    const base = sharp({ create: { width: 80, height: 72, channels: 4, background: { r: 10, g: 200, b: 90, alpha: 0.5 } } });
    const seeds = await Promise.all([
      base.clone().jpeg().toBuffer(),
      base.clone().png().toBuffer(),
      base.clone().webp().toBuffer(),
      base.clone().gif().toBuffer(),
      base.clone().tiff().toBuffer(),
      base.clone().avif({ effort: 0 }).toBuffer(),
    ]);
    const mutation = fc.record({
      seed: fc.integer({ min: 0, max: seeds.length - 1 }),
      flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
    });
    await fc.assert(
      fc.asyncProperty(mutation, async ({ seed, flips, cut }) => {
        const bytes = Buffer.from(seeds[seed]!);
        for (const [at, value] of flips) bytes[at % bytes.length] = value;
        const input = cut === undefined ? bytes : bytes.subarray(0, cut % bytes.length);
        const out = await decodeImage(input, FIELD, OPTS).catch((e: unknown) => e);
        if (out instanceof Error) {
          expect(out).toBeInstanceOf(ImageInputError);
          expect((out as ImageInputError).field).toBe(FIELD);
        } else {
          const img = out as Awaited<ReturnType<typeof decodeImage>>;
          expect(img.rgb.length).toBe(img.width * img.height * 3);
          expect(img.width * img.height).toBeLessThanOrEqual(OPTS.maxRefPixels);
        }
      }),
      { numRuns: Number(process.env.KS_FUZZ_RUNS ?? 150) },
    );
  });
});
