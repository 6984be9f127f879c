import { lookup as dnsLookup } from 'node:dns/promises';
import { addressAllowed, hostAllowed, type FetchAllowlist } from './allowlist.js';
import { nonPublicRange, parseAddress, type IpAddress } from './address.js';
import { ImageInputError } from './errors.js';
import { assertFetchableUrl } from './source.js';

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

/** Resolves a host name to every address it has; injectable so tests can play a rebinding DNS. */
export type HostResolver = (hostname: string) => Promise<ResolvedAddress[]>;

export const systemResolver: HostResolver = async (hostname) => {
  const answers = await dnsLookup(hostname, { all: true, verbatim: true });
  return answers.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
};

/**
 * Resolves the URL's host once and returns the address the connection must be pinned to. Every
 * answer must be public (or allow-listed): a name that mixes public and private answers is refused,
 * because the connecting side could otherwise be steered to the private one.
 */
export async function resolveAllowed(
  url: URL,
  field: string,
  allowlist: FetchAllowlist,
  resolve: HostResolver = systemResolver,
): Promise<ResolvedAddress> {
  assertFetchableUrl(url, field);
  const host = url.hostname;
  const literal = parseAddress(host);
  const answers = literal !== undefined ? [toResolved(literal)] : await resolveName(host, field, resolve);
  if (answers.length === 0) throw new ImageInputError(field, `host '${host}' did not resolve`);
  if (literal === undefined && hostAllowed(allowlist, host)) return answers[0]!;
  for (const answer of answers) {
    const addr = parseAddress(answer.address);
    if (addr === undefined) throw new ImageInputError(field, `host '${host}' resolved to an invalid address`);
    const range = nonPublicRange(addr);
    if (range !== undefined && !addressAllowed(allowlist, addr)) {
      const shown = literal !== undefined ? host : `host '${host}' resolves to ${addr.toString()}`;
      throw new ImageInputError(field, `URL refused: ${shown} is a non-public address (${range})`);
    }
  }
  return toResolved(parseAddress(answers[0]!.address)!);
}

/** The interface the control plane calls at request time, before a run is queued. */
export async function checkUrlAllowed(
  url: URL,
  field: string,
  allowlist: FetchAllowlist,
  resolve?: HostResolver,
): Promise<void> {
  await resolveAllowed(url, field, allowlist, resolve);
}

async function resolveName(host: string, field: string, resolve: HostResolver): Promise<ResolvedAddress[]> {
  try {
    return await resolve(host.replace(/\.$/, ''));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ImageInputError(field, `host '${host}' could not be resolved${code ? ` (${code})` : ''}`, { cause: err });
  }
}

function toResolved(addr: IpAddress): ResolvedAddress {
  return { address: addr.toString(), family: addr.kind() === 'ipv4' ? 4 : 6 };
}
