/** The raster formats kleinserve decodes; everything else is refused before sharp sees it. */
export type RasterFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'avif' | 'tiff';

export type Sniffed = { format: RasterFormat } | { refused: string };

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * Identifies the format from magic bytes. This is the gate that keeps sharp's SVG (librsvg) and
 * any other loader away from untrusted input: only the six raster signatures pass.
 */
export function sniffFormat(b: Buffer): Sniffed {
  if (b.length === 0) return { refused: 'file is empty (0 bytes)' };
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return { format: 'jpeg' };
  if (b.length >= 8 && b.subarray(0, 8).equals(PNG_SIGNATURE)) return { format: 'png' };
  const head = b.toString('latin1', 0, Math.min(b.length, 16));
  if (head.startsWith('GIF87a') || head.startsWith('GIF89a')) return { format: 'gif' };
  if (head.startsWith('RIFF') && head.slice(8, 12) === 'WEBP') return { format: 'webp' };
  if (head.startsWith('II*\0') || head.startsWith('MM\0*')) return { format: 'tiff' };
  if (head.slice(4, 8) === 'ftyp') return sniffIsoMedia(b);
  return { refused: describeNonImage(b) };
}

/** AVIF is an ISO-BMFF file whose ftyp box names an avif brand; HEIC and video are refused. */
function sniffIsoMedia(b: Buffer): Sniffed {
  const boxSize = b.readUInt32BE(0);
  const end = Math.min(b.length, boxSize >= 16 && boxSize <= 4096 ? boxSize : 16);
  const brands: string[] = [b.toString('latin1', 8, 12)];
  for (let at = 16; at + 4 <= end; at += 4) brands.push(b.toString('latin1', at, at + 4));
  if (brands.includes('avif') || brands.includes('avis')) return { format: 'avif' };
  return { refused: `unsupported ISO media file (brand '${brands[0]!.replace(/[^\x20-\x7e]/g, '?')}'; only AVIF)` };
}

function describeNonImage(b: Buffer): string {
  const text = b.toString('latin1', 0, Math.min(b.length, 512)).replace(/^\uFEFF|^\xEF\xBB\xBF/, '').trimStart();
  const lower = text.toLowerCase();
  if (lower.startsWith('<svg') || (lower.startsWith('<?xml') && lower.includes('<svg'))) {
    return 'SVG is not accepted (raster images only: jpeg, png, webp, gif, avif, tiff)';
  }
  if (lower.startsWith('<!doctype html') || lower.startsWith('<html') || lower.startsWith('<')) {
    return 'markup (HTML/XML) is not an image';
  }
  if (lower.startsWith('%pdf')) return 'PDF is not accepted (raster images only)';
  if (/^[\x09\x0a\x0d\x20-\x7e]*$/.test(text)) return 'text is not an image';
  return 'unrecognised image format (accepted: jpeg, png, webp, gif, avif, tiff)';
}
