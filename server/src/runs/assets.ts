// Uploaded assets: a caller reserves an asset (name, type, declared size), sends the bytes to an unguessable
// upload URL without its key (a browser can), confirms, and then references the asset in runs by its URL or
// as runflow://assets/{id}. Records and bytes live in the object store (shared by every replica):
// assets/{id}/record.json and assets/{id}/content.
import { randomBytes } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { ServiceError } from '../errors.ts';
import type { ObjectStore } from '../storage/object-store.ts';

/** Largest asset accepted, as Runflow's asset uploads cap it. */
export const MAX_ASSET_BYTES = 52_428_800;

export interface AssetRecord {
  id: string;
  /** The secret part of the asset's upload and download URLs. */
  token: string;
  /** The owning caller's scope (hash of its API key). */
  owner: string;
  name: string;
  mime_type: string;
  size_bytes: number;
  state: 'pending' | 'ready';
  created_at: number;
}

const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const recordKey = (id: string) => `assets/${id}/record.json`;
export const assetContentKey = (id: string) => `assets/${id}/content`;
const notFound = (id: string) => new ServiceError('not_found', 'ASSET_NOT_FOUND', `asset ${id} not found`);

export class AssetLibrary {
  constructor(private readonly objects: ObjectStore) {}

  async create(owner: string, file: { name: string; mime_type: string; size_bytes: number }): Promise<AssetRecord> {
    const asset: AssetRecord = {
      id: uuidv7(),
      token: randomBytes(16).toString('hex'),
      owner,
      ...file,
      state: 'pending',
      created_at: Date.now(),
    };
    await this.save(asset);
    return asset;
  }

  /** The upload itself: authorised by the token alone, bounded by the size declared when it was reserved. */
  async receive(id: string, token: string, bytes: Buffer): Promise<void> {
    const asset = await this.find(id);
    if (!asset || asset.token !== token) throw notFound(id);
    if (asset.state === 'ready') throw new ServiceError('conflict', 'ASSET_CONFIRMED', `asset ${id} is confirmed; upload a new asset instead`);
    if (bytes.length > asset.size_bytes) {
      throw new ServiceError('payload_too_large', 'PAYLOAD_TOO_LARGE', `the upload is ${bytes.length} bytes; asset ${id} was declared as ${asset.size_bytes}`);
    }
    await this.objects.put(assetContentKey(id), bytes);
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

  /** A confirmed asset's bytes, by its unguessable URL (token) or, for its owner, by id. */
  async content(id: string, access: { token: string } | { owner: string }): Promise<{ asset: AssetRecord; bytes: Buffer }> {
    const asset = await this.find(id);
    const allowed = asset && asset.state === 'ready' && ('token' in access ? asset.token === access.token : asset.owner === access.owner);
    if (!allowed) throw notFound(id);
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
