// Which receiver a callback goes to, for fair sharing of delivery slots: the URL's host name (ports and
// paths on one host are one receiver), so one slow host cannot hold every slot however many URLs it uses.

/** Lower-cased host name of a callback URL (IPv6 in brackets); the raw string when it does not parse. */
export function receiverOf(url: string): string {
  try {
    return new URL(url).hostname.toLowerCase();
  } catch {
    return url.toLowerCase();
  }
}

/**
 * SQL LIKE patterns (escape character `\`) matching the lower-cased URLs of `host`, so a store can leave
 * out deliveries to receivers that already hold their share of slots. Anchored at the scheme, so a host
 * named only in another URL's path or query does not match.
 */
export function receiverUrlPatterns(host: string): string[] {
  const h = host.replace(/[\\%_]/g, (c) => '\\' + c);
  return ['http://', 'https://'].flatMap((scheme) => ['', '/%', ':%', '?%', '#%'].map((tail) => scheme + h + tail));
}
