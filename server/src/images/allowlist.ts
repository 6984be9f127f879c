import ipaddr from 'ipaddr.js';
import { inCidr, parseAddress, type IpAddress } from './address.js';

/**
 * Operator exceptions to the SSRF guard (KLEINSERVE_FETCH_ALLOWLIST). A host entry trusts the name
 * whatever it resolves to; a CIDR or IP entry trusts the resolved address.
 */
export interface FetchAllowlist {
  readonly hosts: ReadonlySet<string>;
  /** From "*.example.com": any subdomain of example.com (not example.com itself). */
  readonly domainSuffixes: readonly string[];
  readonly cidrs: readonly [IpAddress, number][];
}

export const EMPTY_ALLOWLIST: FetchAllowlist = { hosts: new Set(), domainSuffixes: [], cidrs: [] };

const HOSTNAME = /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}[a-z0-9_])?)*$/;

/** Parses "host, 10.0.0.0/8, *.corp.example, ::1"; a malformed entry is a startup error. */
export function parseAllowlist(spec: string | undefined): FetchAllowlist {
  const hosts = new Set<string>();
  const domainSuffixes: string[] = [];
  const cidrs: [IpAddress, number][] = [];
  for (const raw of (spec ?? '').split(',')) {
    const entry = raw.trim().toLowerCase();
    if (entry === '') continue;
    if (entry.includes('/')) {
      cidrs.push(parseCidrEntry(entry));
      continue;
    }
    const addr = parseAddress(entry);
    if (addr !== undefined) {
      cidrs.push([addr, addr.kind() === 'ipv4' ? 32 : 128]);
    } else if (entry.startsWith('*.') && HOSTNAME.test(entry.slice(2))) {
      domainSuffixes.push(entry.slice(1));
    } else if (HOSTNAME.test(entry.replace(/\.$/, ''))) {
      hosts.add(entry.replace(/\.$/, ''));
    } else {
      throw new Error(`KLEINSERVE_FETCH_ALLOWLIST: '${entry}' is not a host name, IP address or CIDR`);
    }
  }
  return { hosts, domainSuffixes, cidrs };
}

function parseCidrEntry(entry: string): [IpAddress, number] {
  try {
    const [addr, bits] = ipaddr.parseCIDR(entry);
    if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
      return [(addr as ipaddr.IPv6).toIPv4Address(), bits - 96];
    }
    return [addr, bits];
  } catch {
    throw new Error(`KLEINSERVE_FETCH_ALLOWLIST: '${entry}' is not a valid CIDR`);
  }
}

export function hostAllowed(allowlist: FetchAllowlist, hostname: string): boolean {
  const host = hostname.toLowerCase().replace(/\.$/, '');
  return allowlist.hosts.has(host) || allowlist.domainSuffixes.some((s) => host.endsWith(s));
}

export function addressAllowed(allowlist: FetchAllowlist, addr: IpAddress): boolean {
  return allowlist.cidrs.some((cidr) => inCidr(addr, cidr));
}
