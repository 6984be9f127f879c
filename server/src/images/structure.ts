import type { RasterFormat } from './sniff.js';

/**
 * Checks on the container structure that sharp does not make: how many bytes of metadata a file
 * carries (a huge EXIF/XMP/text block costs parse time and memory for no pixels) and whether it
 * also parses as another document (a polyglot), which an image input has no reason to be.
 */
export interface StructureFindings {
  metadataBytes: number;
  polyglot?: string;
}

const MARKUP = ['<script', '<html', '<svg', '<!doctype', '<body', '<iframe', '<?php', '<object', '<embed', '<meta'];

const SECOND_CHARS = new Set(MARKUP.map((t) => t.charCodeAt(1) | 0x20));

export function inspectStructure(b: Buffer, format: RasterFormat): StructureFindings {
  const polyglot = findMarkup(b) ?? findPdf(b) ?? findZip(b);
  if (format === 'jpeg') return { metadataBytes: jpegMetadataBytes(b), polyglot };
  if (format === 'png') {
    const png = walkPng(b);
    return { metadataBytes: png.ancillaryBytes, polyglot: polyglot ?? png.trailing };
  }
  return { metadataBytes: 0, polyglot };
}

/** Markup anywhere in the file: case-insensitive match after each '<'. XMP tags do not match. */
function findMarkup(b: Buffer): string | undefined {
  for (let at = b.indexOf(0x3c); at >= 0; at = b.indexOf(0x3c, at + 1)) {
    // Compressed pixel data has a '<' every ~256 bytes; one byte compare rejects nearly all of them.
    if (!SECOND_CHARS.has((b[at + 1] ?? 0) | 0x20)) continue;
    for (const tag of MARKUP) {
      if (at + tag.length > b.length) continue;
      if (b.toString('latin1', at, at + tag.length).toLowerCase() === tag) {
        return `file also contains markup ('${tag}' at byte ${at}); polyglot files are refused`;
      }
    }
  }
  return undefined;
}

/** PDF readers accept a header anywhere in the first KiB. */
function findPdf(b: Buffer): string | undefined {
  const at = b.subarray(0, 1024).indexOf('%PDF-', 0, 'latin1');
  return at >= 0 ? `file also contains a PDF header at byte ${at}; polyglot files are refused` : undefined;
}

/** ZIP/JAR readers start from the end-of-central-directory record, which must end the file exactly. */
function findZip(b: Buffer): string | undefined {
  const from = Math.max(0, b.length - 22 - 0xffff);
  for (let at = b.lastIndexOf('PK\x05\x06', b.length - 22, 'latin1'); at >= from; at = b.lastIndexOf('PK\x05\x06', at - 1, 'latin1')) {
    if (at + 22 + b.readUInt16LE(at + 20) === b.length) {
      return 'file also is a ZIP/JAR archive; polyglot files are refused';
    }
    if (at === 0) break;
  }
  return undefined;
}

/** Sum of APPn and COM segment sizes before the first scan. */
function jpegMetadataBytes(b: Buffer): number {
  let total = 0;
  let at = 2;
  while (at + 4 <= b.length) {
    if (b[at] !== 0xff) break;
    const marker = b[at + 1]!;
    if (marker === 0xff) {
      at += 1;
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      at += 2;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) break;
    const length = b.readUInt16BE(at + 2);
    if ((marker >= 0xe0 && marker <= 0xef) || marker === 0xfe) total += length;
    at += 2 + length;
  }
  return total;
}

/** Sum of ancillary chunk sizes, and anything found after IEND. */
function walkPng(b: Buffer): { ancillaryBytes: number; trailing?: string } {
  let total = 0;
  let at = 8;
  while (at + 12 <= b.length) {
    const length = b.readUInt32BE(at);
    const type = b.toString('latin1', at + 4, at + 8);
    const next = at + 12 + length;
    if (type === 'IEND') {
      const extra = b.length - Math.min(next, b.length);
      return {
        ancillaryBytes: total,
        trailing: extra > 0 ? `file has ${extra} bytes after the PNG end (IEND); polyglot files are refused` : undefined,
      };
    }
    // Ancillary chunks have a lowercase first letter (bit 5 set).
    if ((b[at + 4]! & 0x20) !== 0) total += length;
    at = next;
  }
  return { ancillaryBytes: total };
}
