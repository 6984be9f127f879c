/**
 * Generates the hostile-image corpus (issue 7 item 2) into a directory, with manifest.json saying
 * what each file must do: be accepted (with its expected size and a probe pixel) or be refused
 * (with a pattern the refusal reason must match). Generated, never committed as binaries.
 *
 *   npx tsx server/scripts/hostile-corpus.ts OUT_DIR
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';

export type Rgb = [number, number, number];

export interface Probe {
  x: number;
  y: number;
  rgb: Rgb;
  tolerance: number;
}

export interface CorpusFile {
  file: string;
  what: string;
  expect: 'accept' | 'refuse';
  /** For refusals: a regular expression the ImageInputError reason must match. */
  reason?: string;
  width?: number;
  height?: number;
  probes?: Probe[];
}

/** Strings sent as one image_urls entry; refused by the source parser before any decode. */
export interface CorpusSource {
  file: string;
  what: string;
  reason: string;
}

export interface CorpusManifest {
  files: CorpusFile[];
  sources: CorpusSource[];
}

const RED: Rgb = [255, 0, 0];
const BLUE: Rgb = [0, 0, 255];

function solidRaw(width: number, height: number, channels: 3 | 4, pixel: (x: number, y: number) => number[]): Buffer {
  const buf = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) buf.set(pixel(x, y), (y * width + x) * channels);
  }
  return buf;
}

function solid(width: number, height: number, rgb: Rgb) {
  return sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });
}

/** Two frames stacked vertically: red then blue. */
function twoFrames(width: number, frameHeight: number) {
  const raw = solidRaw(width, frameHeight * 2, 3, (_x, y) => (y < frameHeight ? RED : BLUE));
  return sharp(raw, { raw: { width, height: frameHeight * 2, channels: 3, pageHeight: frameHeight } });
}

function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

/** A well-formed PNG header that declares 50000x50000 RGB, with only a few rows of real data. */
function bombPng(): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(50_000, 0);
  ihdr.writeUInt32BE(50_000, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const rows = deflateSync(Buffer.alloc((50_000 * 3 + 1) * 4));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', rows),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Inserts JPEG segments right after SOI. */
function withJpegSegments(jpeg: Buffer, segments: Buffer[]): Buffer {
  return Buffer.concat([jpeg.subarray(0, 2), ...segments, jpeg.subarray(2)]);
}

function jpegSegment(marker: number, payload: Buffer): Buffer {
  const head = Buffer.from([0xff, marker, 0, 0]);
  head.writeUInt16BE(payload.length + 2, 2);
  return Buffer.concat([head, payload]);
}

/** 128 APP1 "Exif" segments of ~64 KiB: 8 MiB of metadata around a 96x96 picture. */
function hugeExif(jpeg: Buffer): Buffer {
  const payload = Buffer.concat([Buffer.from('Exif\0\0MM\0*\0\0\0\x08', 'latin1'), Buffer.alloc(65_000, 0x41)]);
  return withJpegSegments(jpeg, Array.from({ length: 128 }, () => jpegSegment(0xe1, payload)));
}

/** A GIF comment extension carrying a script, inserted after the global colour table. */
function gifWithScript(gif: Buffer): Buffer {
  const flags = gif[10]!;
  const tableBytes = flags & 0x80 ? 3 * 2 ** ((flags & 0x07) + 1) : 0;
  const at = 13 + tableBytes;
  const text = Buffer.from('<script>alert(document.domain)</script>', 'latin1');
  const comment = Buffer.concat([Buffer.from([0x21, 0xfe, text.length]), text, Buffer.from([0])]);
  return Buffer.concat([gif.subarray(0, at), comment, gif.subarray(at)]);
}

/** A one-entry stored ZIP (what a JAR is), appended to an image. */
function zipArchive(name: string, content: Buffer): Buffer {
  const fileName = Buffer.from(name, 'latin1');
  const crc = crc32(content) >>> 0;
  const local = Buffer.alloc(30);
  local.writeUInt32LE(0x04034b50, 0);
  local.writeUInt16LE(10, 4);
  local.writeUInt32LE(crc, 14);
  local.writeUInt32LE(content.length, 18);
  local.writeUInt32LE(content.length, 22);
  local.writeUInt16LE(fileName.length, 26);
  const central = Buffer.alloc(46);
  central.writeUInt32LE(0x02014b50, 0);
  central.writeUInt16LE(10, 4);
  central.writeUInt16LE(10, 6);
  central.writeUInt32LE(crc, 16);
  central.writeUInt32LE(content.length, 20);
  central.writeUInt32LE(content.length, 24);
  central.writeUInt16LE(fileName.length, 28);
  const localPart = Buffer.concat([local, fileName, content]);
  const centralPart = Buffer.concat([central, fileName]);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(1, 8);
  end.writeUInt16LE(1, 10);
  end.writeUInt32LE(centralPart.length, 12);
  end.writeUInt32LE(localPart.length, 16);
  return Buffer.concat([localPart, centralPart, end]);
}

function isoFtyp(brand: string): Buffer {
  const box = Buffer.alloc(24);
  box.writeUInt32BE(24, 0);
  box.write('ftyp', 4, 'latin1');
  box.write(brand, 8, 'latin1');
  box.write('mif1', 16, 'latin1');
  box.write(brand, 20, 'latin1');
  return Buffer.concat([box, Buffer.alloc(200)]);
}

const SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000"><rect width="100%" height="100%" fill="red"/></svg>';

type Built = Omit<CorpusFile, 'file'> & { name: string; bytes: Buffer };

async function acceptedFiles(): Promise<Built[]> {
  const p = (x: number, y: number, rgb: Rgb, tolerance: number): Probe => ({ x, y, rgb, tolerance });
  const alphaRaw = solidRaw(96, 96, 4, (x, y) => (x < 48 ? [0, 160, 0, 255] : y < 48 ? [255, 0, 0, 0] : [0, 0, 0, 128]));
  const rotatedRaw = solidRaw(128, 96, 3, (_x, y) => (y < 48 ? RED : BLUE));
  return [
    { name: 'baseline.jpg', what: 'plain sRGB JPEG', bytes: await solid(96, 80, [200, 100, 50]).jpeg().toBuffer(),
      expect: 'accept', width: 96, height: 80, probes: [p(48, 40, [200, 100, 50], 12)] },
    { name: 'cmyk.jpg', what: 'CMYK JPEG, converted to sRGB', bytes: await solid(96, 96, RED).toColourspace('cmyk').jpeg().toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(48, 48, RED, 60)] },
    { name: 'rgb16.png', what: '16-bit PNG, converted to 8-bit', bytes: await solid(96, 96, [128, 64, 255]).toColourspace('rgb16').png().toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(10, 10, [128, 64, 255], 2)] },
    { name: 'palette.png', what: 'palette (indexed) PNG', bytes: await solid(96, 96, [0, 0, 255]).png({ palette: true }).toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(10, 10, [0, 0, 255], 8)] },
    { name: 'alpha.png', what: 'RGBA PNG: opaque, transparent and half-transparent areas, flattened on white',
      bytes: await sharp(alphaRaw, { raw: { width: 96, height: 96, channels: 4 } }).png().toBuffer(),
      expect: 'accept', width: 96, height: 96,
      probes: [p(10, 10, [0, 160, 0], 2), p(80, 10, [255, 255, 255], 2), p(80, 80, [127, 127, 127], 3)] },
    { name: 'animated.gif', what: 'animated GIF, 2 frames; the first (red) is used', bytes: await twoFrames(96, 64).gif({ loop: 0 }).toBuffer(),
      expect: 'accept', width: 96, height: 64, probes: [p(48, 32, RED, 16)] },
    { name: 'animated.webp', what: 'animated WebP, 2 frames; the first (red) is used',
      bytes: await twoFrames(96, 64).webp({ lossless: true, loop: 0 }).toBuffer(),
      expect: 'accept', width: 96, height: 64, probes: [p(48, 32, RED, 4)] },
    { name: 'grayscale.png', what: 'grayscale PNG, expanded to RGB', bytes: await solid(96, 96, [100, 100, 100]).toColourspace('b-w').png().toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(20, 20, [100, 100, 100], 2)] },
    { name: 'grayscale.jpg', what: 'grayscale JPEG, expanded to RGB', bytes: await solid(96, 96, [60, 60, 60]).toColourspace('b-w').jpeg().toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(20, 20, [60, 60, 60], 6)] },
    { name: 'exif-orientation-6.jpg', what: '128x96 JPEG with EXIF orientation 6: shown rotated to 96x128',
      bytes: await sharp(rotatedRaw, { raw: { width: 128, height: 96, channels: 3 } }).jpeg().withMetadata({ orientation: 6 }).toBuffer(),
      expect: 'accept', width: 96, height: 128, probes: [p(80, 64, RED, 40), p(16, 64, BLUE, 40)] },
    { name: 'large.png', what: '2048x1536 PNG, Lanczos-downscaled to at most 1 MP with its aspect kept',
      bytes: await solid(2048, 1536, [10, 120, 240]).png().toBuffer(),
      expect: 'accept', width: 1182, height: 886, probes: [p(500, 400, [10, 120, 240], 2)] },
    { name: 'still.webp', what: 'lossy WebP', bytes: await solid(96, 96, [30, 200, 30]).webp().toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(48, 48, [30, 200, 30], 16)] },
    { name: 'still.avif', what: 'AVIF', bytes: await solid(96, 96, [30, 200, 30]).avif({ effort: 0 }).toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(48, 48, [30, 200, 30], 24)] },
    { name: 'still.tiff', what: 'TIFF', bytes: await solid(96, 96, [30, 200, 30]).tiff().toBuffer(),
      expect: 'accept', width: 96, height: 96, probes: [p(48, 48, [30, 200, 30], 2)] },
  ];
}

async function refusedFiles(): Promise<Built[]> {
  const jpeg = await solid(96, 96, [200, 100, 50]).jpeg().toBuffer();
  const png = await solid(96, 96, [200, 100, 50]).png().toBuffer();
  const gif = await solid(96, 96, [200, 100, 50]).gif().toBuffer();
  const r = (name: string, what: string, bytes: Buffer, reason: string): Built => ({ name, what, bytes, expect: 'refuse', reason });
  return [
    r('zero-byte.png', 'zero-byte file', Buffer.alloc(0), 'empty'),
    r('truncated.jpg', 'JPEG cut at 60%', jpeg.subarray(0, Math.floor(jpeg.length * 0.6)), 'corrupt|could not decode'),
    r('truncated.png', 'PNG cut at 60%', png.subarray(0, Math.floor(png.length * 0.6)), 'corrupt|could not decode'),
    r('header-only.jpg', 'JPEG signature followed by garbage', Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(400, 7)]), 'corrupt|could not decode'),
    r('bomb-50000x50000.png', 'PNG declaring 50000x50000 (7.5 GB of pixels)', bombPng(), 'too large: 50000x50000'),
    r('huge-exif.jpg', 'JPEG with 8 MiB of EXIF segments', hugeExif(jpeg), 'metadata .*too large'),
    r('tiny-32x32.png', 'image below the 64 px minimum side', await solid(32, 32, RED).png().toBuffer(), 'too small'),
    r('wide-800x80.png', 'aspect ratio 10 (> 8)', await solid(800, 80, RED).png().toBuffer(), 'aspect ratio'),
    r('image.svg', 'SVG sent as an image', Buffer.from(SVG), 'SVG'),
    r('prolog.svg', 'SVG with an XML prolog', Buffer.from(`<?xml version="1.0"?>\n${SVG}`), 'SVG'),
    r('page.html', 'HTML sent as an image', Buffer.from('<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>'), 'markup'),
    r('notes.txt', 'plain text sent as an image', Buffer.from('this is not an image\n'), 'text is not an image'),
    r('bom.html', 'HTML with a UTF-8 BOM and leading spaces', Buffer.from('\uFEFF  <html><script>alert(1)</script></html>'), 'markup'),
    r('random.bin', 'random bytes', Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 151 + 7) % 256)), 'unrecognised'),
    r('pdf.pdf', 'PDF sent as an image', Buffer.from('%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n'), 'PDF'),
    r('fake.heic', 'HEIC (ISO media, not AVIF)', isoFtyp('heic'), 'only AVIF'),
    r('png-html.png', 'polyglot: PNG with an HTML page after IEND',
      Buffer.concat([png, Buffer.from('<html><script>alert(1)</script></html>')]), 'polyglot'),
    r('png-trailer.png', 'polyglot: PNG with opaque data after IEND', Buffer.concat([png, Buffer.alloc(64, 0x42)]), 'after the PNG end'),
    r('gif-script.gif', 'polyglot: GIF with a <script> comment', gifWithScript(gif), 'polyglot'),
    r('jpeg-html-comment.jpg', 'polyglot: JPEG with HTML in a COM segment',
      withJpegSegments(jpeg, [jpegSegment(0xfe, Buffer.from('<html><body onload=alert(1)>'))]), 'polyglot'),
    r('jpeg-pdf.jpg', 'polyglot: JPEG that is also a PDF (header in the first KiB)',
      withJpegSegments(jpeg, [jpegSegment(0xfe, Buffer.from('%PDF-1.4\n'))]), 'PDF'),
    r('jpeg-jar.jpg', 'polyglot: JPEG with a ZIP/JAR appended (GIFAR-style)',
      Buffer.concat([jpeg, zipArchive('META-INF/MANIFEST.MF', Buffer.from('Manifest-Version: 1.0\n'))]), 'ZIP'),
  ];
}

function sources(): Array<CorpusSource & { value: string }> {
  return [
    { file: 'src-base64-50mb.txt', what: '50 MB raw base64 string', value: 'A'.repeat(50 * 1024 * 1024), reason: 'too large' },
    { file: 'src-invalid-base64.txt', what: 'invalid base64', value: 'iVBORw0KGgo*&^%$not-base64', reason: 'invalid base64' },
    { file: 'src-bad-padding.txt', what: 'base64 with padding in the middle', value: 'iVBO=w0KGgo=', reason: 'invalid base64' },
    { file: 'src-data-text-html.txt', what: 'data: URI with MIME text/html', value: 'data:text/html;base64,PGgxPmhpPC9oMT4=', reason: "MIME type 'text/html'" },
    { file: 'src-data-svg.txt', what: 'data: URI with MIME image/svg+xml', value: `data:image/svg+xml;base64,${Buffer.from(SVG).toString('base64')}`, reason: 'MIME type' },
    { file: 'src-data-not-base64.txt', what: 'data: URI without ;base64', value: 'data:image/png,%89PNG', reason: 'base64' },
    { file: 'src-file-url.txt', what: 'file: URL', value: 'file:///etc/passwd', reason: 'scheme' },
    { file: 'src-credentials-url.txt', what: 'URL with credentials', value: 'http://user:secret@example.com/a.png', reason: 'credentials' },
  ];
}

/** Writes every corpus file plus manifest.json into dir and returns the manifest. */
export async function generateCorpus(dir: string): Promise<CorpusManifest> {
  await mkdir(dir, { recursive: true });
  const built = [...(await acceptedFiles()), ...(await refusedFiles())];
  const files: CorpusFile[] = [];
  for (const { name, bytes, ...entry } of built) {
    await writeFile(join(dir, name), bytes);
    files.push({ file: name, ...entry });
  }
  const srcs: CorpusSource[] = [];
  for (const { value, ...entry } of sources()) {
    await writeFile(join(dir, entry.file), value);
    srcs.push(entry);
  }
  const manifest = { files, sources: srcs };
  await writeFile(join(dir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: tsx server/scripts/hostile-corpus.ts OUT_DIR');
    process.exit(2);
  }
  const m = await generateCorpus(dir);
  console.log(`wrote ${m.files.length} images and ${m.sources.length} source strings to ${dir}`);
}
