// The terms of a presigned upload (fal's storage) on the real asset library over a disk store, with the clock
// moved by hand: one upload, within its time, of an image under the inline limit; read and used by its owner only.
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { ServiceError } from '../../src/errors.ts';
import { AssetLibrary, MAX_PRESIGNED_BYTES, PRESIGNED_UPLOAD_TTL_MS } from '../../src/runs/assets.ts';
import { DiskStore } from '../../src/storage/disk-store.ts';
import { testImage } from '../helpers/images.ts';
import { tmpDir } from '../helpers/server.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function library() {
  const dir = tmpDir('ks-assets-');
  dirs.push(dir);
  const clock = { now: 1_000_000 };
  return { assets: new AssetLibrary(new DiskStore(dir), () => clock.now), clock };
}

const refusal = (p: Promise<unknown>) => p.then(() => expect.unreachable('should refuse'), (e: ServiceError) => e);

describe('presigned uploads', () => {
  it('take one image within their time, then serve it to their owner only', async () => {
    const { assets, clock } = library();
    const png = await testImage(64, 64, 'png');
    const asset = await assets.createPresigned('owner-a', { name: 'a.jpg', mime_type: 'application/octet-stream' });
    expect(asset.size_bytes).toBe(MAX_PRESIGNED_BYTES);

    const text = await refusal(assets.receive(asset.id, asset.token, Buffer.from('not an image')));
    expect(text).toMatchObject({ kind: 'invalid_input', errors: [{ field: 'body', reason: 'text is not an image' }] });
    const tooBig = await refusal(assets.receive(asset.id, asset.token, Buffer.alloc(MAX_PRESIGNED_BYTES + 1)));
    expect(tooBig).toMatchObject({ kind: 'payload_too_large', errors: [{ field: 'body' }] });

    clock.now += PRESIGNED_UPLOAD_TTL_MS - 1;
    const ready = await assets.receive(asset.id, asset.token, png);
    // The type is what the bytes are, whatever the upload declared.
    expect(ready).toMatchObject({ state: 'ready', mime_type: 'image/png', size_bytes: png.length });
    expect(await refusal(assets.receive(asset.id, asset.token, png))).toMatchObject({ kind: 'conflict', code: 'UPLOAD_URL_USED' });

    expect((await assets.content(asset.id, { token: asset.token, owner: 'owner-a' })).bytes.equals(png)).toBe(true);
    expect((await assets.content(asset.id, { owner: 'owner-a' })).bytes.equals(png)).toBe(true);
    expect(await refusal(assets.content(asset.id, { token: asset.token }))).toMatchObject({ kind: 'unauthorized' });
    expect(await refusal(assets.content(asset.id, { token: asset.token, owner: 'owner-b' }))).toMatchObject({ kind: 'not_found' });
    expect(await refusal(assets.content(asset.id, { owner: 'owner-b' }))).toMatchObject({ kind: 'not_found' });
  });

  it('refuse an expired or unknown upload URL, naming which', async () => {
    const { assets, clock } = library();
    const asset = await assets.createPresigned('owner-a', { name: 'a.png', mime_type: 'image/png' });
    clock.now += PRESIGNED_UPLOAD_TTL_MS + 1;
    const expired = await refusal(assets.uploadTarget(asset.id, asset.token));
    expect(expired).toMatchObject({ kind: 'gone', code: 'UPLOAD_URL_EXPIRED' });
    expect(expired.message).toMatch(/expired at/);
    expect(await refusal(assets.uploadTarget(asset.id, 'f'.repeat(32)))).toMatchObject({ kind: 'not_found', code: 'UPLOAD_NOT_FOUND' });
  });

  it("leave Runflow's reserved assets as they were: any bytes up to the declared size, re-sent until confirmed, read by URL", async () => {
    const { assets, clock } = library();
    const asset = await assets.create('owner-a', { name: 'x.bin', mime_type: 'image/png', size_bytes: 4 });
    clock.now += 10 * PRESIGNED_UPLOAD_TTL_MS;
    await assets.receive(asset.id, asset.token, Buffer.from('abc'));
    await assets.receive(asset.id, asset.token, Buffer.from('abcd'));
    await assets.confirm('owner-a', asset.id);
    expect((await assets.content(asset.id, { token: asset.token })).bytes.toString()).toBe('abcd');
    expect(await refusal(assets.receive(asset.id, asset.token, Buffer.from('a')))).toMatchObject({ kind: 'conflict', code: 'ASSET_CONFIRMED' });
  });
});
