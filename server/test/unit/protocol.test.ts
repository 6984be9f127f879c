import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameDecoder, ProtocolError } from '../../src/engine/protocol.ts';

const bytes = (parts: Buffer[]) => Buffer.concat(parts);

describe('engine protocol framing', () => {
  it('round-trips header and blobs, whatever the chunking', () => {
    const blobA = Buffer.from([1, 2, 3]);
    const blobB = Buffer.alloc(70_000, 9);
    const wire = bytes([...encodeFrame({ id: 'r1', op: 'generate', prompt: 'é' }, [blobA, blobB]), ...encodeFrame({ id: 'h', op: 'health' })]);
    for (const size of [5, 8, 999, 65_536, wire.length]) {
      const dec = new FrameDecoder();
      const frames = [];
      for (let i = 0; i < wire.length; i += size) frames.push(...dec.push(wire.subarray(i, i + size)));
      expect(frames).toHaveLength(2);
      expect(frames[0].header).toMatchObject({ v: 1, id: 'r1', op: 'generate', prompt: 'é', blobs: [3, 70_000] });
      expect(frames[0].blobs[0]).toEqual(blobA);
      expect(frames[0].blobs[1].equals(blobB)).toBe(true);
      expect(frames[1].header).toMatchObject({ id: 'h', op: 'health', blobs: [] });
    }
  });

  it('writes the documented prefix: u32 BE header length, u32 BE body length', () => {
    const [prefix, json, blob] = encodeFrame({ id: 'x', op: 'health' }, [Buffer.alloc(5)]);
    expect(prefix.readUInt32BE(0)).toBe(json.length);
    expect(prefix.readUInt32BE(4)).toBe(5);
    expect(blob.length).toBe(5);
  });

  it('refuses oversized frames and inconsistent blob lengths', () => {
    const big = Buffer.alloc(8);
    big.writeUInt32BE(2 << 20, 0);
    expect(() => new FrameDecoder().push(big)).toThrow(ProtocolError);
    const json = Buffer.from(JSON.stringify({ v: 1, id: 'a', op: 'x', blobs: [2] }));
    const prefix = Buffer.alloc(8);
    prefix.writeUInt32BE(json.length, 0);
    prefix.writeUInt32BE(3, 4);
    expect(() => new FrameDecoder().push(bytes([prefix, json, Buffer.alloc(3)]))).toThrow(/do not add up/);
  });
});
