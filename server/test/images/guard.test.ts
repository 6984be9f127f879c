import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { nonPublicRange, parseAddress } from '../../src/images/address.js';
import { checkUrlAllowed, ImageInputError, parseAllowlist, type HostResolver } from '../../src/images/index.js';

const FIELD = 'input.image_urls[1]';
const none = parseAllowlist(undefined);

function rangeOf(text: string): string | undefined {
  return nonPublicRange(parseAddress(text)!);
}

describe('address classification', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.0.1', 'private'],
    ['169.254.169.254', 'linkLocal'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['100.64.0.1', 'carrierGradeNat'],
    ['224.0.0.1', 'multicast'],
    ['255.255.255.255', 'broadcast'],
    ['192.0.2.1', 'reserved'],
    ['198.18.0.1', 'reserved'],
    ['240.0.0.1', 'reserved'],
    ['::1', 'loopback'],
    ['::', 'unspecified'],
    ['fc00::1', 'uniqueLocal'],
    ['fd00::2', 'uniqueLocal'],
    ['fe80::1', 'linkLocal'],
    ['ff02::1', 'multicast'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:169.254.169.254', 'linkLocal'],
    ['64:ff9b::7f00:1', 'rfc6052'],
    ['64:ff9b:1::a00:1', 'rfc6052'],
    ['::127.0.0.1', 'loopback'], // ipaddr.js reads a dotted tail as IPv4: refused as what it embeds
    ['::7f00:1', 'reserved'], // IPv4-compatible, as WHATWG URL spells [::127.0.0.1]
    ['2002:7f00:1::', '6to4'],
    ['2001:0:4136:e378::1', 'teredo'],
    ['2001:db8::1', 'reserved'],
    ['fec0::1', 'deprecatedSiteLocal'],
    ['100::1', 'discard'],
  ])('%s is non-public (%s)', (addr, range) => {
    expect(rangeOf(addr)).toBe(range);
  });

  it.each(['8.8.8.8', '1.1.1.1', '93.184.215.14', '172.32.0.1', '2606:4700:4700::1111', '2a00:1450:4001::200e'])(
    '%s is public',
    (addr) => expect(rangeOf(addr)).toBeUndefined(),
  );

  it('never calls an address public when its IPv4-mapped form is not', () => {
    fc.assert(
      fc.property(fc.ipV4(), (v4) => {
        expect(rangeOf(`::ffff:${v4}`)).toBe(rangeOf(v4));
      }),
    );
  });

  it('refuses every IPv6 address outside 2000::/3', () => {
    fc.assert(
      fc.property(fc.ipV6(), (v6) => {
        const addr = parseAddress(v6)!;
        const first = addr.kind() === 'ipv6' ? (addr.toByteArray()[0]! & 0xe0) : -1;
        if (addr.kind() === 'ipv6' && first !== 0x20) expect(nonPublicRange(addr)).toBeDefined();
      }),
    );
  });
});

describe('parseAllowlist', () => {
  it('parses hosts, wildcard domains, IPs and CIDRs', () => {
    const list = parseAllowlist(' images.internal , *.corp.example,127.0.0.1, 10.0.0.0/8,::1, fd00::/8 ,');
    expect([...list.hosts]).toEqual(['images.internal']);
    expect(list.domainSuffixes).toEqual(['.corp.example']);
    expect(list.cidrs.map(([a, b]) => `${a.toString()}/${b}`)).toEqual(['127.0.0.1/32', '10.0.0.0/8', '::1/128', 'fd00::/8']);
  });

  it('is empty for an unset or blank variable', () => {
    for (const spec of [undefined, '', ' , ,']) expect(parseAllowlist(spec)).toMatchObject({ domainSuffixes: [], cidrs: [] });
  });

  it.each(['10.0.0.0/33', 'not a host', 'http://x.com', '1.2.3.4/abc'])('refuses the malformed entry %s', (spec) => {
    expect(() => parseAllowlist(spec)).toThrow(/KLEINSERVE_FETCH_ALLOWLIST/);
  });
});

describe('checkUrlAllowed', () => {
  const dns: Record<string, string[]> = {
    'public.test': ['93.184.215.14'],
    'metadata.test': ['169.254.169.254'],
    'intranet.test': ['10.1.2.3'],
    'mixed.test': ['93.184.215.14', '127.0.0.1'],
    'v6local.test': ['fd12::1'],
    'mapped.test': ['::ffff:192.168.1.1'],
    'images.internal': ['10.9.9.9'],
    'a.corp.example': ['172.20.0.5'],
  };
  const resolve: HostResolver = async (host) => {
    const answers = dns[host];
    if (!answers) throw Object.assign(new Error('not found'), { code: 'ENOTFOUND' });
    return answers.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  const check = (url: string, allowlist = none) => checkUrlAllowed(new URL(url), FIELD, allowlist, resolve);

  it('allows a name that resolves only to public addresses', async () => {
    await expect(check('https://public.test/a.png')).resolves.toBeUndefined();
    await expect(check('http://8.8.8.8/a.png')).resolves.toBeUndefined();
  });

  it.each([
    ['http://127.0.0.1/', /127\.0\.0\.1 is a non-public address \(loopback\)/],
    ['http://2130706433/', /loopback/],
    ['http://0x7f.1/', /loopback/],
    ['http://017700000001/', /loopback/],
    ['http://0/', /unspecified/],
    ['http://[::1]/', /loopback/],
    ['http://[::ffff:127.0.0.1]/', /loopback/],
    ['http://[::ffff:a9fe:a9fe]/', /linkLocal/],
    ['http://169.254.169.254/latest/meta-data/', /linkLocal/],
    ['http://metadata.test/', /resolves to 169\.254\.169\.254 .*linkLocal/],
    ['http://intranet.test/', /resolves to 10\.1\.2\.3 .*private/],
    ['http://mixed.test/', /resolves to 127\.0\.0\.1 .*loopback/],
    ['http://v6local.test/', /uniqueLocal/],
    ['http://mapped.test/', /resolves to 192\.168\.1\.1 .*private/],
    ['http://nowhere.test/', /could not be resolved \(ENOTFOUND\)/],
    ['http://u:p@public.test/', /credentials/],
    ['ftp://public.test/', /scheme/],
  ])('refuses %s', async (url, reason) => {
    const err = await check(url).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageInputError);
    expect((err as ImageInputError).field).toBe(FIELD);
    expect((err as ImageInputError).reason).toMatch(reason);
  });

  it('lets the operator allow-list reach hosts and ranges, and nothing else', async () => {
    const allow = parseAllowlist('images.internal,*.corp.example,127.0.0.0/8,::1');
    await expect(check('http://images.internal/', allow)).resolves.toBeUndefined();
    await expect(check('http://a.corp.example/', allow)).resolves.toBeUndefined();
    await expect(check('http://127.8.9.10/', allow)).resolves.toBeUndefined();
    await expect(check('http://[::ffff:127.0.0.1]/', allow)).resolves.toBeUndefined();
    await expect(check('http://[::1]/', allow)).resolves.toBeUndefined();
    await expect(check('http://corp.example/', allow)).rejects.toThrow(/could not be resolved/);
    await expect(check('http://intranet.test/', allow)).rejects.toThrow(/private/);
    await expect(check('http://169.254.169.254/', allow)).rejects.toThrow(/linkLocal/);
  });
});
