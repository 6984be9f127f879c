import { ImageInputError, formatBytes } from './errors.js';

export type ImageSource = { kind: 'url'; url: URL } | { kind: 'inline'; bytes: Buffer; mime?: string };

export interface SourceOptions {
  /** Cap on decoded inline bytes, checked on the string length before any decoding. */
  maxInlineBytes?: number;
}

export const DEFAULT_MAX_INLINE_BYTES = 20 * 1024 * 1024;

/** data: URIs may only carry the raster formats decodeImage accepts. */
export const ACCEPTED_MIME = new Map<string, string>([
  ['image/png', 'image/png'],
  ['image/jpeg', 'image/jpeg'],
  ['image/jpg', 'image/jpeg'],
  ['image/pjpeg', 'image/jpeg'],
  ['image/webp', 'image/webp'],
  ['image/gif', 'image/gif'],
  ['image/avif', 'image/avif'],
  ['image/tiff', 'image/tiff'],
]);

const BASE64_BODY = /^[A-Za-z0-9+/]*$/;
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const SCHEME = /^([a-zA-Z][a-zA-Z0-9+.-]*):/;
const WHITESPACE = /[ \t\r\n]/g;

/**
 * Classifies one `image_urls` entry by syntax only (no I/O): an http(s) URL, a data: URI or raw
 * base64. A raw base64 string can never contain ':', so a leading scheme is unambiguous.
 */
export function parseImageSource(value: string, field: string, opts: SourceOptions = {}): ImageSource {
  const maxBytes = opts.maxInlineBytes ?? DEFAULT_MAX_INLINE_BYTES;
  if (typeof value !== 'string') throw new ImageInputError(field, 'must be a string');
  const trimmed = value.trim();
  if (trimmed.length === 0) throw new ImageInputError(field, 'is empty');

  // Only the head can hold a scheme; a 50 MB base64 string is not scanned here.
  const scheme = SCHEME.exec(trimmed.slice(0, 64))?.[1]?.toLowerCase();
  if (scheme === 'data') return parseDataUri(trimmed, field, maxBytes);
  if (scheme !== undefined) return { kind: 'url', url: parseHttpUrl(trimmed, field) };
  return { kind: 'inline', bytes: decodeStrictBase64(trimmed, field, maxBytes) };
}

export function parseHttpUrl(value: string, field: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ImageInputError(field, 'is not a valid URL');
  }
  assertFetchableUrl(url, field);
  return url;
}

/** Rules every URL must pass, including each redirect target. */
export function assertFetchableUrl(url: URL, field: string): void {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ImageInputError(field, `unsupported URL scheme '${url.protocol.slice(0, -1)}' (only http and https)`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new ImageInputError(field, 'URLs with credentials are not allowed');
  }
  if (url.hostname === '') throw new ImageInputError(field, 'URL has no host');
}

function parseDataUri(value: string, field: string, maxBytes: number): ImageSource {
  const comma = value.indexOf(',');
  if (comma < 0) throw new ImageInputError(field, "data: URI has no ',' separator");
  const params = value.slice(5, comma).split(';').map((p) => p.trim());
  const mime = params[0]!.toLowerCase();
  if (mime === '') throw new ImageInputError(field, 'data: URI has no MIME type');
  const canonical = ACCEPTED_MIME.get(mime);
  if (canonical === undefined) {
    throw new ImageInputError(
      field,
      `data: URI MIME type '${clip(mime)}' is not accepted (png, jpeg, webp, gif, avif or tiff)`,
    );
  }
  if (params.length < 2 || params[params.length - 1]!.toLowerCase() !== 'base64') {
    throw new ImageInputError(field, 'data: URI must be base64-encoded (;base64,)');
  }
  for (const p of params.slice(1, -1)) {
    if (!/^[A-Za-z0-9!#$&^_.+-]+=[^;,]*$/.test(p)) {
      throw new ImageInputError(field, `data: URI has a malformed parameter '${clip(p)}'`);
    }
  }
  return { kind: 'inline', bytes: decodeStrictBase64(value.slice(comma + 1), field, maxBytes), mime: canonical };
}

/**
 * Strict RFC 4648 base64: standard alphabet, required padding, canonical trailing bits; spaces and
 * line breaks are tolerated (MIME wraps at 76). The length check comes first so a huge string is
 * refused without scanning or allocating it.
 */
export function decodeStrictBase64(text: string, field: string, maxBytes: number): Buffer {
  // Allow line breaks (up to 2 chars per 76) on top of the encoded size before looking inside.
  const encodedCap = Math.ceil(maxBytes / 3) * 4;
  if (text.length > encodedCap + Math.ceil(encodedCap / 38) + 16) {
    throw new ImageInputError(
      field,
      `inline image is too large: ~${formatBytes(Math.floor((text.length * 3) / 4))} exceeds ${formatBytes(maxBytes)}`,
    );
  }
  const body = text.replace(WHITESPACE, '');
  if (body.length === 0) throw new ImageInputError(field, 'base64 data is empty');
  // Only canonical strict base64 survives a decode/re-encode round trip unchanged, so one native pass
  // replaces the alphabet regex (~0.7 ms per 136 KB edit body); the slow checks only name the fault.
  const bytes = Buffer.from(body, 'base64');
  if (bytes.toString('base64') !== body) refuseBase64(body, field);
  if (bytes.length > maxBytes) {
    throw new ImageInputError(field, `inline image is too large: ${formatBytes(bytes.length)} exceeds ${formatBytes(maxBytes)}`);
  }
  return bytes;
}

function refuseBase64(body: string, field: string): never {
  if (body.length % 4 !== 0) throw new ImageInputError(field, 'invalid base64: length is not a multiple of 4');
  const pad = body.endsWith('==') ? 2 : body.endsWith('=') ? 1 : 0;
  const core = body.slice(0, body.length - pad);
  if (!BASE64_BODY.test(core)) {
    throw new ImageInputError(field, 'invalid base64: characters outside the standard alphabet or misplaced padding');
  }
  if (pad > 0 && !hasZeroTrailingBits(core, pad)) {
    throw new ImageInputError(field, 'invalid base64: non-canonical trailing bits');
  }
  // Unreachable: a string passing all three checks above re-encodes to itself.
  throw new ImageInputError(field, 'invalid base64');
}

function hasZeroTrailingBits(core: string, pad: number): boolean {
  const last = ALPHABET.indexOf(core[core.length - 1]!);
  return (last & (pad === 2 ? 0x0f : 0x03)) === 0;
}

function clip(s: string): string {
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}
