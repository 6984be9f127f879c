import { describe, expect, it } from 'vitest';
import { parseSse, toImageUrl } from '../src/index.js';
import { writeFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  return new ReadableStream({ start(c) { for (const ch of chunks) c.enqueue(enc.encode(ch)); c.close(); } });
}

describe('parseSse', () => {
  it('reassembles events split across chunks and skips comments', async () => {
    const out = [];
    for await (const m of parseSse(streamOf([': ping\n\nevent: prog', 'ress\ndata: {"step":1}\r\n\r\nevent: run\ndata: {"a":', '1}\n\n']))) out.push(m);
    expect(out).toEqual([
      { event: 'progress', data: '{"step":1}', id: undefined },
      { event: 'run', data: '{"a":1}', id: undefined },
    ]);
  });
});

describe('toImageUrl', () => {
  const png = Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex');
  it('turns bytes, Blobs and files into data URIs and passes URLs through', async () => {
    expect(await toImageUrl(png)).toMatch(/^data:image\/png;base64,iVBORw0KGgo/);
    expect(await toImageUrl(new Blob([png], { type: 'image/png' }))).toMatch(/^data:image\/png;base64,/);
    const dir = await mkdtemp(join(tmpdir(), 'ks-sdk-'));
    await writeFile(join(dir, 'a.png'), png);
    expect(await toImageUrl(join(dir, 'a.png'))).toMatch(/^data:image\/png;base64,/);
    expect(await toImageUrl('https://example.com/a.jpg')).toBe('https://example.com/a.jpg');
    await expect(toImageUrl('/no/such/file.png', 2)).rejects.toThrow(/images\[2\]/);
  });
});
