// Uploaded assets: a caller reserves an asset (name, type, declared size), sends the bytes to an unguessable
// upload URL without its key (a browser can), confirms, and then references the asset in runs by its URL or
// as runflow://assets/{id}. Records and bytes live in the object store (shared by every replica):
// assets/{id}/record.json and assets/{id}/content.
// A presigned upload (fal's storage flow) is the same asset with stricter terms: its upload URL takes the bytes
// once and briefly, they must be an image no larger than an inline one, there is no confirmation step, and
// only its owner's key may read or use it, even holding its URL.
import { randomBytes } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { invalidInput, ServiceError } from '../errors.ts';
import { DEFAULT_MAX_INLINE_BYTES } from '../images/source.ts';
import { sniffFormat } from '../images/sniff.ts';
import type { ObjectStore } from '../storage/object-store.ts';

/** Largest asset accepted, as Runflow's asset uploads cap it. */
export const MAX_ASSET_BYTES = 52_428_800;
/** Largest presigned upload: the bound of an inline image, since that is what the upload stands in for. */
export const MAX_PRESIGNED_BYTES = DEFAULT_MAX_INLINE_BYTES;
/** How long a presigned upload URL takes its bytes. */
export const PRESIGNED_UPLOAD_TTL_MS = 15 * 60_000;

export interface AssetRecord {
  id: string;
  /** The secret part of the asset's upload and download URLs. */
  token: string;
  /** The owning caller's scope (hash of its API key). */
  owner: string;
  name: string;
  mime_type: string;
  /** While pending, the most bytes its upload may carry; once ready, the bytes it has. */
  size_bytes: number;
  state: 'pending' | 'ready';
  created_at: number;
  /** A presigned upload: its URL takes the bytes once, until this time (epoch ms), and they must be an image. */
  upload_expires_at?: number;
  /** Only the owner's key may read or use it; its URL alone is not enough. */
  owner_only?: boolean;
}

/** How a caller reaches an asset: by its URL's token (with its key, when it sent one) or, as its owner, by id. */
export type AssetAccess = { token: string; owner?: string } | { owner: string };

const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const recordKey = (id: string) => `assets/${id}/record.json`;
export const assetContentKey = (id: string) => `assets/${id}/content`;
const notFound = (id: string) => new ServiceError('not_found', 'ASSET_NOT_FOUND', `asset ${id} not found`);
const unknownUpload = (id: string) => new ServiceError('not_found', 'UPLOAD_NOT_FOUND', `no upload at this URL (asset ${id} unknown, or the token is wrong)`);

export class AssetLibrary {
  constructor(
    private readonly objects: ObjectStore,
    private readonly now: () => number = Date.now,
  ) {}

  create(owner: string, file: { name: string; mime_type: string; size_bytes: number }): Promise<AssetRecord> {
    return this.reserve(owner, file, {});
  }

  /** A presigned upload (see the top of the file): the asset is ready once its one upload has arrived. */
  createPresigned(owner: string, file: { name: string; mime_type: string }): Promise<AssetRecord> {
    return this.reserve(owner, { ...file, size_bytes: MAX_PRESIGNED_BYTES }, { upload_expires_at: this.now() + PRESIGNED_UPLOAD_TTL_MS, owner_only: true });
  }

  private async reserve(
    owner: string,
    file: Pick<AssetRecord, 'name' | 'mime_type' | 'size_bytes'>,
    terms: Pick<AssetRecord, 'upload_expires_at' | 'owner_only'>,
  ): Promise<AssetRecord> {
    const asset: AssetRecord = {
      id: uuidv7(),
      token: randomBytes(16).toString('hex'),
      owner,
      ...file,
      state: 'pending',
      created_at: this.now(),
      ...terms,
    };
    await this.save(asset);
    return asset;
  }

  /**
   * The asset an upload URL names, if it still takes bytes, so the body is refused before a byte is read; its
   * `size_bytes` is the most the body may carry.
   */
  async uploadTarget(id: string, token: string): Promise<AssetRecord> {
    const asset = await this.find(id);
    if (!asset || asset.token !== token) throw unknownUpload(id);
    if (asset.upload_expires_at !== undefined) {
      if (asset.state === 'ready') throw new ServiceError('conflict', 'UPLOAD_URL_USED', `this upload URL was already used (asset ${id} is uploaded); start a new upload`);
      if (this.now() > asset.upload_expires_at) {
        throw new ServiceError('gone', 'UPLOAD_URL_EXPIRED', `this upload URL expired at ${new Date(asset.upload_expires_at).toISOString()}; start a new upload`);
      }
    } else if (asset.state === 'ready') {
      throw new ServiceError('conflict', 'ASSET_CONFIRMED', `asset ${id} is confirmed; upload a new asset instead`);
    }
    return asset;
  }

  /**
   * The upload itself: authorised by the token alone, bounded by the size declared when it was reserved. A
   * presigned upload's bytes must be an image, and make the asset ready.
   */
  async receive(id: string, token: string, bytes: Buffer): Promise<AssetRecord> {
    const asset = await this.uploadTarget(id, token);
    if (bytes.length > asset.size_bytes) {
      throw new ServiceError('payload_too_large', 'PAYLOAD_TOO_LARGE', `the upload is ${bytes.length} bytes; asset ${id} takes at most ${asset.size_bytes}`, [
        { field: 'body', reason: `${bytes.length} bytes is over the ${asset.size_bytes}-byte limit` },
      ]);
    }
    // a presigned upload stands in for an inline image: its bytes must be one, and its format names the asset
    const sniffed = asset.upload_expires_at !== undefined ? sniffFormat(bytes) : null;
    if (sniffed && 'refused' in sniffed) throw invalidInput([{ field: 'body', reason: sniffed.refused }]);
    await this.objects.put(assetContentKey(id), bytes);
    if (!sniffed) return asset;
    const ready: AssetRecord = { ...asset, mime_type: `image/${sniffed.format}`, size_bytes: bytes.length, state: 'ready' };
    await this.save(ready);
    return ready;
  }

  /** Confirms an uploaded asset (its bytes must be there); confirming again returns the same asset. */
  async confirm(owner: string, id: string): Promise<AssetRecord> {
    const asset = await this.owned(owner, id);
    if (asset.state === 'ready') return asset;
    if (!(await this.objects.exists(assetContentKey(id)))) {
      throw new ServiceError('conflict', 'ASSET_NOT_UPLOADED', `asset ${id} has no bytes yet: PUT them to its upload_url, then confirm`);
    }
    const ready: AssetRecord = { ...asset, size_bytes: (await this.objects.get(assetContentKey(id))).length, state: 'ready' };
    await this.save(ready);
    return ready;
  }

  /**
   * A confirmed asset's bytes, by its unguessable URL (token) or, for its owner, by id. An owner-only asset
   * needs its owner's key with the token: without a key it is unauthorized, with another key not found.
   */
  async content(id: string, access: AssetAccess): Promise<{ asset: AssetRecord; bytes: Buffer }> {
    const asset = await this.find(id);
    if (!asset || asset.state !== 'ready') throw notFound(id);
    if ('token' in access) {
      if (asset.token !== access.token) throw notFound(id);
      if (asset.owner_only && access.owner === undefined) {
        throw new ServiceError('unauthorized', 'UNAUTHORIZED', `asset ${id} is readable only with the API key that uploaded it: send that key`);
      }
      if (asset.owner_only && asset.owner !== access.owner) throw notFound(id);
    } else if (asset.owner !== access.owner) {
      throw notFound(id);
    }
    return { asset, bytes: await this.objects.get(assetContentKey(id)) };
  }

  private async owned(owner: string, id: string): Promise<AssetRecord> {
    const asset = await this.find(id);
    if (!asset || asset.owner !== owner) throw notFound(id);
    return asset;
  }

  private async find(id: string): Promise<AssetRecord | null> {
    if (!ID.test(id)) return null;
    try {
      return JSON.parse((await this.objects.get(recordKey(id))).toString('utf8')) as AssetRecord;
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return null;
      throw err;
    }
  }

  private save(asset: AssetRecord): Promise<void> {
    return this.objects.put(recordKey(asset.id), Buffer.from(JSON.stringify(asset)));
  }
}
