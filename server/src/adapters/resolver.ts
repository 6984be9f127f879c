// Turns the `loras` of a run into files the engine can read: a local path plus the sha256 of its bytes.
// Local names are looked up in the operator's adapters directory (never outside it); URLs and Hugging Face
// repo ids are fetched under the same SSRF guard, timeouts and redirect rules as image URLs, with their own
// size cap, and kept in the disk cache by content hash. Each refusal names `input.loras[i].path` and a reason.
import fs from 'node:fs';
import path from 'node:path';
import type { Registry } from 'prom-client';
import { fetchImage, ImageInputError, type FetchOptions } from '../images/index.ts';
import { AdapterCache, AdapterCacheMetrics, sha256Of } from './cache.ts';
import { inspectLora } from './safetensors.ts';
import { LoraRefusal, parseLoraSource, sourceKey, type LoraSource } from './source.ts';

export interface LoraRequest {
  path: string;
  scale: number;
}

/** What the engine gets for one adapter (docs/engine-protocol.md): a file on its machine and its hash. */
export interface ResolvedLora {
  path: string;
  sha256: string;
  scale: number;
}

export interface AdapterResolverOptions {
  /** Where downloaded adapters are kept (by content hash). */
  cacheDir: string;
  cacheBytes: number;
  /** Largest adapter file accepted, local or fetched. */
  maxBytes: number;
  /** The operator's adapters directory for bare names; null: bare names are refused. */
  localDir: string | null;
  /** Base URL of the Hugging Face hub (or a mirror): `<hub>/<repo>/resolve/main/<file>`. */
  hubEndpoint: string;
  /** The image fetcher's guard and limits; its maxBytes is replaced by `maxBytes`. */
  fetch: FetchOptions;
  /** The engine's rank limit when it has reported one. */
  maxRank: () => number | null;
  registry?: Registry;
}

/** diffusers' `save_lora_weights` file name: what a repo id without a file usually means. */
const DEFAULT_HUB_FILE = 'pytorch_lora_weights.safetensors';

export const loraField = (i: number, attr: 'path' | 'scale' = 'path') => `input.loras[${i}].${attr}`;

export class AdapterResolver {
  readonly cache: AdapterCache;
  /** Remote source -> the hash it last resolved to, so a repeat finds the cached file without a fetch. */
  private readonly known = new Map<string, string>();
  private readonly inflight = new Map<string, Promise<Omit<ResolvedLora, 'scale'>>>();
  /** Local files hashed once per (path, size, mtime). */
  private readonly localHashes = new Map<string, string>();

  constructor(private readonly o: AdapterResolverOptions) {
    this.cache = new AdapterCache(o.cacheDir, o.cacheBytes, new AdapterCacheMetrics(o.registry));
  }

  /** Resolves every adapter; all refusals together, or the engine's list in request order. */
  async resolveAll(loras: LoraRequest[]): Promise<{ resolved: ResolvedLora[]; refusals: LoraRefusal[] }> {
    const settled = await Promise.allSettled(loras.map((l, i) => this.resolve(l, loraField(i))));
    const refusals: LoraRefusal[] = [];
    const resolved: ResolvedLora[] = [];
    for (const s of settled) {
      if (s.status === 'fulfilled') resolved.push(s.value);
      else if (s.reason instanceof LoraRefusal) refusals.push(s.reason);
      else throw s.reason;
    }
    return { resolved, refusals };
  }

  async resolve(lora: LoraRequest, field: string): Promise<ResolvedLora> {
    const src = parseLoraSource(lora.path, field);
    if (src.kind === 'local') return { ...(await this.local(src.name, field)), scale: lora.scale };
    const key = sourceKey(src);
    const pending = this.inflight.get(key) ?? this.remote(src, key, field).finally(() => this.inflight.delete(key));
    this.inflight.set(key, pending);
    const got = await pending.catch((err) => {
      // Another request's fetch failed: the refusal names this request's field.
      throw err instanceof LoraRefusal ? new LoraRefusal(field, err.reason, err.detail) : err;
    });
    return { ...got, scale: lora.scale };
  }

  private async local(name: string, field: string): Promise<Omit<ResolvedLora, 'scale'>> {
    if (!this.o.localDir) throw new LoraRefusal(field, 'not_allowed', 'this server has no adapters directory (--lora-dir) for bare names');
    const root = fs.realpathSync(this.o.localDir);
    const candidates = name.endsWith('.safetensors') ? [name] : [name, `${name}.safetensors`];
    for (const c of candidates) {
      let real: string;
      try {
        real = fs.realpathSync(path.join(root, c));
      } catch {
        continue;
      }
      // A symlink out of the directory is as good as "../": refused.
      if (path.dirname(real) !== root && !real.startsWith(root + path.sep)) continue;
      const st = fs.statSync(real);
      if (!st.isFile()) continue;
      if (st.size > this.o.maxBytes) throw new LoraRefusal(field, 'too_large', `${st.size} bytes exceeds the limit of ${this.o.maxBytes}`);
      const memo = `${real}\0${st.size}\0${st.mtimeMs}`;
      let sha = this.localHashes.get(memo);
      if (!sha) {
        const bytes = await fs.promises.readFile(real);
        inspectLora(bytes, field, this.o.maxRank());
        sha = sha256Of(bytes);
        this.localHashes.set(memo, sha);
      }
      return { path: real, sha256: sha };
    }
    throw new LoraRefusal(field, 'unreachable', `no adapter named ${JSON.stringify(name)} in the adapters directory`);
  }

  private async remote(src: Exclude<LoraSource, { kind: 'local' }>, key: string, field: string): Promise<Omit<ResolvedLora, 'scale'>> {
    const known = this.known.get(key);
    const hit = known ? this.cache.get(known) : null;
    if (hit) {
      this.cache.metrics.hits.inc();
      return { path: hit.path, sha256: hit.sha256 };
    }
    const url = src.kind === 'url' ? src.url : await this.hubFileUrl(src.repo, src.file, field);
    const bytes = await this.download(url, field);
    inspectLora(bytes, field, this.o.maxRank());
    this.cache.metrics.misses.inc();
    const stored = await this.cache.put(bytes);
    this.known.set(key, stored.sha256);
    return { path: stored.path, sha256: stored.sha256 };
  }

  private hubUrl(suffix: string): URL {
    return new URL(`${this.o.hubEndpoint.replace(/\/+$/, '')}/${suffix}`);
  }

  /** `repo:file` names its file; a bare repo id means diffusers' default name, else the repo's only .safetensors. */
  private async hubFileUrl(repo: string, file: string | null, field: string): Promise<URL> {
    if (file) return this.hubUrl(`${repo}/resolve/main/${file.split('/').map(encodeURIComponent).join('/')}`);
    const info = await this.download(this.hubUrl(`api/models/${repo}`), field);
    let files: string[];
    try {
      const siblings = (JSON.parse(info.toString('utf8')) as { siblings?: { rfilename?: unknown }[] }).siblings ?? [];
      files = siblings.map((s) => s.rfilename).filter((f): f is string => typeof f === 'string' && f.endsWith('.safetensors'));
    } catch {
      throw new LoraRefusal(field, 'unreachable', `the hub's answer for ${repo} is not a model description`);
    }
    const pick = files.includes(DEFAULT_HUB_FILE) ? DEFAULT_HUB_FILE : files.length === 1 ? files[0] : null;
    if (!pick) {
      throw new LoraRefusal(
        field,
        files.length ? 'invalid' : 'not_a_lora',
        files.length ? `${repo} holds ${files.length} .safetensors files: name one as ${repo}:FILE.safetensors` : `${repo} holds no .safetensors file`,
      );
    }
    return this.hubUrl(`${repo}/resolve/main/${pick.split('/').map(encodeURIComponent).join('/')}`);
  }

  private async download(url: URL, field: string): Promise<Buffer> {
    try {
      return await fetchImage(url, field, { ...this.o.fetch, maxBytes: this.o.maxBytes });
    } catch (err) {
      if (!(err instanceof ImageInputError)) throw err;
      const tooLarge = /too large/.test(err.reason);
      throw new LoraRefusal(field, tooLarge ? 'too_large' : 'unreachable', err.reason.replace(/^image is too large/, 'adapter is too large'));
    }
  }
}

/** The resolver a role that drives a local engine builds from its configuration. */
export function adapterResolverFor(
  cfg: { dataDir: string; loraDir?: string; loraCacheMb: number; loraMaxMb: number; hfEndpoint: string },
  fetch: FetchOptions,
  maxRank: () => number | null,
  registry?: Registry,
): AdapterResolver {
  return new AdapterResolver({
    cacheDir: path.join(cfg.dataDir, 'adapters'),
    cacheBytes: cfg.loraCacheMb * 1024 * 1024,
    maxBytes: cfg.loraMaxMb * 1024 * 1024,
    localDir: cfg.loraDir ? path.resolve(cfg.loraDir) : null,
    hubEndpoint: cfg.hfEndpoint,
    fetch,
    maxRank,
    registry,
  });
}
