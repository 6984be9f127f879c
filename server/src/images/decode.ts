import sharp, { type Metadata, type SharpOptions } from 'sharp';
import { ImageInputError, formatBytes } from './errors.js';
import { sniffFormat, type RasterFormat } from './sniff.js';
import { inspectStructure } from './structure.js';

export interface DecodedImage {
  /** Interleaved 8-bit sRGB, width * height * 3 bytes. */
  rgb: Buffer;
  width: number;
  height: number;
  format: string;
}

export interface DecodeOptions {
  /** Decompression-bomb cap on the declared pixel count, checked before any pixel is decoded. */
  maxInputPixels: number;
  /** Larger images are Lanczos-downscaled to at most this many pixels; never upscaled. */
  maxRefPixels: number;
  minSide: number;
  maxAspect: number;
  /** Cap on EXIF/XMP/ICC/text bytes (JPEG APPn+COM, PNG ancillary chunks). */
  maxMetadataBytes?: number;
  /** Wall-clock cap on the pixel pipeline (sharp counts whole seconds), against slow-to-decode files. */
  timeoutSeconds?: number;
}

export const DEFAULT_DECODE_OPTIONS: DecodeOptions = {
  maxInputPixels: 40_000_000,
  maxRefPixels: 1024 * 1024,
  minSide: 64,
  maxAspect: 8,
  maxMetadataBytes: 2 * 1024 * 1024,
  timeoutSeconds: 10,
};

/** sharp's name for each sniffed format (AVIF is read by the heif loader). */
const SHARP_FORMAT: Record<RasterFormat, string> = {
  jpeg: 'jpeg',
  png: 'png',
  webp: 'webp',
  gif: 'gif',
  avif: 'heif',
  tiff: 'tiff',
};

/**
 * Turns untrusted bytes into the engine's rgb8 reference: oriented, flattened on white, 8-bit
 * sRGB, at most maxRefPixels. Cheap structural checks run first so hostile files fail before
 * sharp allocates pixels.
 */
export async function decodeImage(bytes: Buffer, field: string, opts: DecodeOptions): Promise<DecodedImage> {
  const format = checkContainer(bytes, field, opts);
  const input = { limitInputPixels: opts.maxInputPixels, failOn: 'truncated', pages: 1 } as const;
  // Header only: no pixel is decoded here, so the bomb check below can report the declared size.
  const meta = await readMetadata(bytes, field, { ...input, limitInputPixels: false });
  if (meta.format !== SHARP_FORMAT[format] || (format === 'avif' && meta.compression !== 'av1')) {
    throw new ImageInputError(field, `image content does not match its ${format} signature`);
  }
  const { width, height } = orientedSize(meta);
  checkGeometry(width, height, field, opts);
  const target = fitWithin(width, height, opts.maxRefPixels);
  try {
    let pipeline = sharp(bytes, input).autoOrient().flatten({ background: '#ffffff' }).toColourspace('srgb');
    if (target.width !== width || target.height !== height) {
      pipeline = pipeline.resize(target.width, target.height, { kernel: 'lanczos3', fit: 'fill' });
    }
    const { data, info } = await pipeline
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .timeout({ seconds: opts.timeoutSeconds ?? DEFAULT_DECODE_OPTIONS.timeoutSeconds! })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || data.length !== info.width * info.height * 3) {
      throw new Error(`unexpected decoder output (${info.channels} channels)`);
    }
    return { rgb: data, width: info.width, height: info.height, format };
  } catch (err) {
    throw new ImageInputError(field, `could not decode ${format} image: ${shortMessage(err)}`, { cause: err });
  }
}

function checkContainer(bytes: Buffer, field: string, opts: DecodeOptions): RasterFormat {
  const sniffed = sniffFormat(bytes);
  if ('refused' in sniffed) throw new ImageInputError(field, sniffed.refused);
  const found = inspectStructure(bytes, sniffed.format);
  if (found.polyglot !== undefined) throw new ImageInputError(field, found.polyglot);
  const maxMeta = opts.maxMetadataBytes ?? DEFAULT_DECODE_OPTIONS.maxMetadataBytes!;
  if (found.metadataBytes > maxMeta) {
    throw new ImageInputError(
      field,
      `image metadata (EXIF/XMP/ICC/text) is too large: ${formatBytes(found.metadataBytes)} exceeds ${formatBytes(maxMeta)}`,
    );
  }
  return sniffed.format;
}

async function readMetadata(bytes: Buffer, field: string, input: SharpOptions): Promise<Metadata> {
  try {
    return await sharp(bytes, input).metadata();
  } catch (err) {
    throw new ImageInputError(field, `corrupt or unreadable image: ${shortMessage(err)}`, { cause: err });
  }
}

/** EXIF orientations 5-8 are quarter turns, which swap the visible width and height. */
function orientedSize(meta: Metadata): { width: number; height: number } {
  const w = meta.width ?? 0;
  const h = meta.pageHeight ?? meta.height ?? 0;
  return (meta.orientation ?? 1) >= 5 ? { width: h, height: w } : { width: w, height: h };
}

function checkGeometry(width: number, height: number, field: string, opts: DecodeOptions): void {
  if (width <= 0 || height <= 0) throw new ImageInputError(field, 'image has no pixels');
  if (width * height > opts.maxInputPixels) {
    throw new ImageInputError(
      field,
      `image is too large: ${width}x${height} = ${megapixels(width * height)} exceeds ${megapixels(opts.maxInputPixels)}`,
    );
  }
  if (Math.min(width, height) < opts.minSide) {
    throw new ImageInputError(field, `image is too small: ${width}x${height}, each side must be at least ${opts.minSide} px`);
  }
  const aspect = Math.max(width, height) / Math.min(width, height);
  if (aspect > opts.maxAspect) {
    throw new ImageInputError(field, `aspect ratio ${aspect.toFixed(1)} exceeds ${opts.maxAspect}`);
  }
}

/** Largest size with the same aspect ratio and at most maxPixels; the input size if it already fits. */
export function fitWithin(width: number, height: number, maxPixels: number): { width: number; height: number } {
  if (width * height <= maxPixels) return { width, height };
  const scale = Math.sqrt(maxPixels / (width * height));
  let w = Math.max(1, Math.floor(width * scale));
  let h = Math.max(1, Math.floor(height * scale));
  while (w * h > maxPixels) {
    if (w >= h) w -= 1;
    else h -= 1;
  }
  return { width: w, height: h };
}

function megapixels(n: number): string {
  return `${(n / 1e6).toFixed(1)} MP`;
}

function shortMessage(err: unknown): string {
  const text = String((err as Error)?.message ?? err).split('\n')[0]!.trim();
  return text.length > 160 ? `${text.slice(0, 160)}…` : text;
}
