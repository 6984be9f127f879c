// Inputs that point back at this server: an uploaded asset (runflow://assets/{id}, or its URL) and a stored
// input of an earlier run (the URL a run read back shows for an inline image). They are read from the object
// store, never fetched over HTTP (which the SSRF guard would rightly refuse for a loopback or private base),
// and copied into the new run like inline bytes, so erasing the older run cannot take the new run's input.
import { ServiceError } from '../errors.ts';
import { ImageInputError } from '../images/index.ts';
import type { ObjectStore } from '../storage/object-store.ts';
import type { AssetAccess, AssetLibrary } from './assets.ts';
import type { RunStore } from './store.ts';
import type { RunRecord } from './types.ts';

export const ASSET_REF = /^runflow:\/\/assets\/([0-9a-f-]{36})$/;
const ASSET_PATH = /^\/v1\/assets\/([0-9a-f-]{36})\/([0-9a-f]{32})$/;
const INPUT_PATH = /^\/v1\/inputs\/([0-9a-f-]{36})\/([0-9a-f]{32})\/(\d)$/;

/** The unguessable URL of a run's stored input (its output token guards it, as it guards the outputs). */
export const inputUrl = (baseUrl: string, run: Pick<RunRecord, 'id' | 'output_token'>, index: number) =>
  `${baseUrl}/v1/inputs/${run.id}/${run.output_token}/${index}`;

export const assetUrl = (baseUrl: string, asset: { id: string; token: string }) => `${baseUrl}/v1/assets/${asset.id}/${asset.token}`;

/** Where an asset's bytes are PUT (http/uploads.ts): the token is the authorisation, as in a presigned URL. */
export const uploadUrl = (baseUrl: string, asset: { id: string; token: string }) => `${baseUrl}/v1/asset-uploads/${asset.id}/${asset.token}`;

export interface ReferencedImage {
  bytes: Buffer;
  mime?: string;
}

export class InputReferences {
  constructor(
    private readonly deps: { assets: AssetLibrary; store: RunStore; objects: ObjectStore; baseUrl: () => string },
  ) {}

  /**
   * The image `value` refers to on this server, or undefined when it is not such a reference. A reference
   * to something that is not (or no longer) there is refused naming `field`.
   */
  async resolve(value: string, field: string, owner: string): Promise<ReferencedImage | undefined> {
    const ref = ASSET_REF.exec(value.trim());
    if (ref) return this.asset(ref[1], { owner }, field);
    if (!/^https?:\/\//i.test(value.trim())) return undefined;
    let url: URL;
    try {
      url = new URL(value.trim());
    } catch {
      return undefined;
    }
    const base = this.deps.baseUrl();
    if (!base || url.origin !== new URL(base).origin) return undefined;
    const asset = ASSET_PATH.exec(url.pathname);
    if (asset) return this.asset(asset[1], { token: asset[2], owner }, field);
    const input = INPUT_PATH.exec(url.pathname);
    if (input) {
      try {
        return await this.storedInput(input[1], input[2], Number(input[3]));
      } catch (err) {
        if (err instanceof ServiceError) throw new ImageInputError(field, 'the stored input it points to was not found (expired or erased)');
        throw err;
      }
    }
    return undefined;
  }

  /** A run's stored input by its URL's parts; not found unless the token matches. */
  async storedInput(runId: string, token: string, index: number): Promise<ReferencedImage> {
    const run = await this.deps.store.get(runId);
    const img = run && run.output_token === token ? run.input.images[index] : undefined;
    const gone = new ServiceError('not_found', 'NOT_FOUND', 'no such input');
    if (!img || img.kind !== 'inline') throw gone;
    try {
      return { bytes: await this.deps.objects.get(img.key), mime: img.mime };
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') throw gone;
      throw err;
    }
  }

  private async asset(id: string, access: AssetAccess, field: string): Promise<ReferencedImage> {
    try {
      const { asset, bytes } = await this.deps.assets.content(id, access);
      return { bytes, mime: asset.mime_type };
    } catch (err) {
      if (err instanceof ServiceError) throw new ImageInputError(field, `asset ${id} not found (not uploaded, not confirmed, or not yours)`);
      throw err;
    }
  }
}
