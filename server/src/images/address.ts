import ipaddr from 'ipaddr.js';

export type IpAddress = ipaddr.IPv4 | ipaddr.IPv6;

/** Only 2000::/3 is allocated for global unicast; everything else in IPv6 is refused outright. */
const GLOBAL_UNICAST_V6 = ipaddr.parseCIDR('2000::/3');

/**
 * Ranges ipaddr.js calls 'unicast' but that still reach something other than one public host:
 * IPv4-compatible ::a.b.c.d and embedded-IPv4 translation prefixes are refused rather than decoded.
 */
const EXTRA_DENY_V6 = ['::/96', '64:ff9b::/96', '64:ff9b:1::/48', '2001::/23', '2002::/16', 'fec0::/10'].map((c) =>
  ipaddr.parseCIDR(c),
);

/** Parses an address, unwrapping IPv4-mapped IPv6 (::ffff:127.0.0.1 is 127.0.0.1). */
export function parseAddress(text: string): IpAddress | undefined {
  const bare = text.startsWith('[') && text.endsWith(']') ? text.slice(1, -1) : text;
  if (ipaddr.IPv6.isValid(bare)) {
    // Not ipaddr.process: it also unwraps IPv4-compatible ::8.8.8.8, which is no route to 8.8.8.8.
    const v6 = ipaddr.IPv6.parse(bare);
    return v6.isIPv4MappedAddress() ? v6.toIPv4Address() : v6;
  }
  // Only the canonical dotted quad: WHATWG URL and resolvers never produce "127.1" or "0x7f.1".
  return ipaddr.IPv4.isValidFourPartDecimal(bare) ? ipaddr.IPv4.parse(bare) : undefined;
}

/**
 * Returns undefined for a public unicast address, else the name of the range that makes it
 * non-public (loopback, private, linkLocal, ...), for the refusal message.
 */
export function nonPublicRange(addr: IpAddress): string | undefined {
  if (addr.kind() === 'ipv4') {
    const range = (addr as ipaddr.IPv4).range();
    return range === 'unicast' ? undefined : range;
  }
  const v6 = addr as ipaddr.IPv6;
  if (v6.isIPv4MappedAddress()) return nonPublicRange(v6.toIPv4Address());
  const range = v6.range();
  if (range !== 'unicast') return range;
  if (!v6.match(GLOBAL_UNICAST_V6)) return 'reserved';
  if (EXTRA_DENY_V6.some((cidr) => v6.match(cidr))) return 'reserved';
  return undefined;
}

export function inCidr(addr: IpAddress, cidr: [IpAddress, number]): boolean {
  return addr.kind() === cidr[0].kind() && addr.match(cidr);
}
