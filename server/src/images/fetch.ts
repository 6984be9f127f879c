import type { LookupFunction } from 'node:net';
import { rootCertificates } from 'node:tls';
import { Agent, request, type Dispatcher } from 'undici';
import type { FetchAllowlist } from './allowlist.js';
import { ImageInputError, formatBytes } from './errors.js';
import { resolveAllowed, type HostResolver, type ResolvedAddress } from './guard.js';

export interface FetchOptions {
  allowlist: FetchAllowlist;
  /** Whole fetch, DNS and every redirect included. */
  timeoutMs: number;
  maxBytes: number;
  maxRedirects: number;
  /** TCP/TLS connect limit per hop; defaults to timeoutMs. */
  connectTimeoutMs?: number;
  /** DNS override, for tests that play a rebinding resolver. */
  resolve?: HostResolver;
  /** Extra trusted CA certificates (PEM), e.g. for an internal image host behind a private CA. */
  ca?: string | Buffer;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * Fetches an image URL under the SSRF guard: each hop is resolved and checked, then connected to
 * the checked address only (the socket's lookup is pinned), so a DNS answer that changes between
 * check and connect cannot reach a private address. Redirects are followed here, one checked hop
 * at a time.
 */
export async function fetchImage(url: URL, field: string, opts: FetchOptions): Promise<Buffer> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), opts.timeoutMs);
  try {
    return await followHops(url, field, opts, abort.signal);
  } catch (err) {
    if (err instanceof ImageInputError) throw err;
    if (abort.signal.aborted) {
      throw new ImageInputError(field, `fetch timed out after ${opts.timeoutMs} ms`, { cause: err });
    }
    throw new ImageInputError(field, `fetch failed: ${describe(err)}`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
}

async function followHops(start: URL, field: string, opts: FetchOptions, signal: AbortSignal): Promise<Buffer> {
  let url = start;
  for (let hop = 0; ; hop++) {
    const pinned = await raceAbort(resolveAllowed(url, field, opts.allowlist, opts.resolve), signal);
    const agent = pinnedAgent(pinned, opts.connectTimeoutMs ?? opts.timeoutMs, opts.ca);
    try {
      const res = await request(url, { dispatcher: agent, method: 'GET', signal, headers: REQUEST_HEADERS });
      if (REDIRECTS.has(res.statusCode)) {
        await res.body.dump();
        url = nextHop(url, res, hop, field, opts.maxRedirects);
        continue;
      }
      if (res.statusCode !== 200) {
        await res.body.dump();
        throw new ImageInputError(field, `fetch failed: HTTP ${res.statusCode} from ${url.host}`);
      }
      return await readCapped(res, field, opts.maxBytes);
    } finally {
      agent.destroy().catch(() => {});
    }
  }
}

const REQUEST_HEADERS = { accept: 'image/*', 'user-agent': 'kleinserve-image-fetch' };

function nextHop(url: URL, res: Dispatcher.ResponseData, hop: number, field: string, max: number): URL {
  if (hop >= max) throw new ImageInputError(field, `too many redirects (more than ${max})`);
  const location = res.headers.location;
  if (typeof location !== 'string' || location === '') {
    throw new ImageInputError(field, `fetch failed: HTTP ${res.statusCode} without a Location header`);
  }
  try {
    return new URL(location, url);
  } catch {
    throw new ImageInputError(field, 'fetch failed: redirect Location is not a valid URL');
  }
}

/**
 * An undici dispatcher for one request to `url` whose sockets can only reach the address that
 * passed the SSRF guard. For other outbound calls to user-given URLs (e.g. callbacks): checking
 * the URL and then connecting by name would leave the DNS-rebinding window open. Destroy it after.
 */
export async function guardedAgent(
  url: URL,
  field: string,
  allowlist: FetchAllowlist,
  opts: { connectTimeoutMs?: number; resolve?: HostResolver; ca?: string | Buffer } = {},
): Promise<Agent> {
  return pinnedAgent(await resolveAllowed(url, field, allowlist, opts.resolve), opts.connectTimeoutMs ?? 10_000, opts.ca);
}

function pinnedAgent(pinned: ResolvedAddress, connectTimeoutMs: number, ca?: string | Buffer): Agent {
  const lookup: LookupFunction = (_hostname, options, callback) => {
    if (options?.all) (callback as (e: null, a: ResolvedAddress[]) => void)(null, [pinned]);
    else callback(null, pinned.address, pinned.family);
  };
  // TLS still verifies the certificate against the URL's host name (SNI), not the pinned address.
  // A `ca` option replaces Node's trust store, so the public roots are passed along with it.
  const connect = { lookup, timeout: connectTimeoutMs, ...(ca !== undefined ? { ca: [...rootCertificates, ca] } : {}) };
  return new Agent({ connect, pipelining: 0, keepAliveTimeout: 1 });
}

async function readCapped(res: Dispatcher.ResponseData, field: string, maxBytes: number): Promise<Buffer> {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    res.body.destroy();
    throw new ImageInputError(field, `image is too large: ${formatBytes(declared)} exceeds ${formatBytes(maxBytes)}`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res.body) {
    total += (chunk as Buffer).length;
    if (total > maxBytes) {
      res.body.destroy();
      throw new ImageInputError(field, `image is too large: more than ${formatBytes(maxBytes)}`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, total);
}

function raceAbort<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

const FRIENDLY: Record<string, string> = {
  UND_ERR_CONNECT_TIMEOUT: 'connect timed out',
  UND_ERR_SOCKET: 'connection closed by the server',
  UND_ERR_HEADERS_OVERFLOW: 'response headers too large',
};

function describe(err: unknown): string {
  const e = err as { code?: string; message?: string; cause?: { code?: string } };
  const code = e.cause?.code ?? e.code;
  return (code && FRIENDLY[code]) ?? code ?? e.message ?? String(err);
}
