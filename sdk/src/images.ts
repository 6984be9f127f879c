import type { ImageInput } from './types.js';

/** Magic-byte sniffing so a data URI carries the right type without trusting file names. */
export function sniffMime(bytes: Uint8Array): string {
  const b = bytes;
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'image/jpeg';
  if (b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return 'image/png';
  if (b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46 && b[8] === 0x57 && b[9] === 0x45) return 'image/webp';
  if (b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46) return 'image/gif';
  return 'application/octet-stream';
}

export function bytesToBase64(bytes: Uint8Array): string {
  if (typeof Buffer !== 'undefined') return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function toDataUri(bytes: Uint8Array, mime?: string): string {
  return `data:${mime && mime.startsWith('image/') ? mime : sniffMime(bytes)};base64,${bytesToBase64(bytes)}`;
}

const looksLikeUrlOrData = (s: string) => /^(https?:\/\/|data:)/i.test(s);

type LocalFile = { bytes: Uint8Array } | { problem: string } | undefined;

/** Reads a local file in Node; says why it could not (missing, a directory, unreadable). Undefined in browsers. */
async function readLocalFile(path: string): Promise<LocalFile> {
  if (typeof process === 'undefined' || !process.versions?.node) return undefined;
  const fs = await import('node:fs/promises');
  const { resolve } = await import('node:path');
  try {
    const st = await fs.stat(path);
    if (!st.isFile()) return { problem: `${resolve(path)} is not a file` };
    return { bytes: new Uint8Array(await fs.readFile(path)) };
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return { problem: `file not found: ${resolve(path)}` };
    return { problem: `cannot read ${resolve(path)}: ${(err as Error).message}` };
  }
}

const looksLikeBase64 = (s: string) => /^[A-Za-z0-9+/=\s]+$/.test(s) && s.length > 64;

/**
 * Turns whatever the caller holds into one `image_urls` item: URLs and data URIs pass through (the server
 * fetches URLs itself), local files and bytes become data URIs, and any other string is sent as raw base64.
 */
export async function toImageUrl(image: ImageInput, index = 0): Promise<string> {
  if (typeof image === 'string') {
    if (looksLikeUrlOrData(image)) return image;
    const file = await readLocalFile(image);
    if (file && 'bytes' in file) return toDataUri(file.bytes);
    if (looksLikeBase64(image)) return image.replace(/\s+/g, '');
    if (file) throw new TypeError(`images[${index}]: ${file.problem}`);
    throw new TypeError(`images[${index}]: not an http(s) URL, data URI or base64 string: ${image.slice(0, 80)}`);
  }
  if (typeof Blob !== 'undefined' && image instanceof Blob) {
    return toDataUri(new Uint8Array(await image.arrayBuffer()), image.type);
  }
  if (image instanceof ArrayBuffer) return toDataUri(new Uint8Array(image));
  if (image instanceof Uint8Array) return toDataUri(image);
  throw new TypeError(`images[${index}]: unsupported image type`);
}
