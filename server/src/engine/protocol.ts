// Framing for engine protocol v1 (docs/engine-protocol.md): u32 header_len, u32 body_len, JSON header, blobs.
export const PROTOCOL_VERSION = 1;
export const MAX_HEADER_BYTES = 1 << 20;
export const MAX_BODY_BYTES = 256 << 20;

export interface FrameHeader {
  v: number;
  id: string | null;
  op: string;
  blobs?: number[];
  [k: string]: unknown;
}

export interface Frame {
  header: FrameHeader;
  blobs: Buffer[];
}

export class ProtocolError extends Error {}

export function encodeFrame(header: Omit<FrameHeader, 'v' | 'blobs'>, blobs: Buffer[] = []): Buffer[] {
  const full = { v: PROTOCOL_VERSION, ...header, blobs: blobs.map((b) => b.length) };
  const json = Buffer.from(JSON.stringify(full), 'utf8');
  const bodyLen = blobs.reduce((n, b) => n + b.length, 0);
  const prefix = Buffer.allocUnsafe(8);
  prefix.writeUInt32BE(json.length, 0);
  prefix.writeUInt32BE(bodyLen, 4);
  // Returned as a list so large pixel buffers go to the socket without being copied into one buffer.
  return [prefix, json, ...blobs];
}

/** Incremental decoder: feed socket chunks, get whole frames. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      const frame = this.tryTake();
      if (!frame) return frames;
      frames.push(frame);
    }
  }

  private tryTake(): Frame | null {
    if (this.buffered < 8) return null;
    const head = this.peek(8);
    const headerLen = head.readUInt32BE(0);
    const bodyLen = head.readUInt32BE(4);
    if (headerLen > MAX_HEADER_BYTES || bodyLen > MAX_BODY_BYTES) {
      throw new ProtocolError(`frame too large (header ${headerLen}, body ${bodyLen})`);
    }
    const total = 8 + headerLen + bodyLen;
    if (this.buffered < total) return null;
    const all = this.take(total);
    const header = JSON.parse(all.subarray(8, 8 + headerLen).toString('utf8')) as FrameHeader;
    const blobs: Buffer[] = [];
    let off = 8 + headerLen;
    for (const len of header.blobs ?? []) {
      blobs.push(all.subarray(off, off + len));
      off += len;
    }
    if (off !== total) throw new ProtocolError('blob lengths do not add up to body_len');
    return { header, blobs };
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0];
    return this.take(n, false);
  }

  private take(n: number, consume = true): Buffer {
    const merged = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    if (!consume) {
      this.chunks = [merged];
      return merged;
    }
    const rest = merged.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered -= n;
    return merged.subarray(0, n);
  }
}
