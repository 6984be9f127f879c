import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import type { IncomingMessage, ServerResponse } from 'node:http';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { request } from 'undici';
import { fetchImage, guardedAgent, ImageInputError, parseAllowlist, type FetchOptions, type HostResolver } from '../../src/images/index.js';
import { startServer, type RecordingServer } from './servers.js';

/**
 * Every test here talks to real local servers. 127.0.0.2 (allow-listed) stands in for "the public
 * internet"; the canary listens on every other local address (127/8, ::1, 0.0.0.0, and this host's
 * 192.0.2.2 / fd00::2 if present) and must never see a request.
 */
const FIELD = 'input.image_urls[2]';
const VENV_PYTHON = join(import.meta.dirname, '../../../.venv/bin/python');
const PUBLIC = '127.0.0.2';
let canary: RecordingServer;
let origin: RecordingServer;
let png: Buffer;
let base: string;

const opts = (over: Partial<FetchOptions> = {}): FetchOptions => ({
  allowlist: parseAllowlist(`${PUBLIC}/32`),
  timeoutMs: 2000,
  maxBytes: 1024 * 1024,
  maxRedirects: 3,
  ...over,
});

function route(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://x');
  const redirect = (to: string, status = 302): void => void res.writeHead(status, { location: to }).end();
  const p = canary.port;
  switch (url.pathname) {
    case '/img.png':
      return void res.writeHead(200, { 'content-type': 'image/png' }).end(png);
    case '/to-img':
      return redirect('/img.png', 301);
    case '/to-canary':
      return redirect(`http://127.0.0.1:${p}/secret`);
    case '/to-canary-decimal':
      return redirect(`http://2130706433:${p}/secret`, 307);
    case '/to-canary-v6':
      return redirect(`http://[::1]:${p}/secret`, 308);
    case '/to-metadata':
      return redirect('http://169.254.169.254/latest/meta-data/', 303);
    case '/to-creds':
      return redirect(`http://user:pw@${PUBLIC}:${origin.port}/img.png`);
    case '/to-file':
      return redirect('file:///etc/passwd');
    case '/chain': {
      const n = Number(url.searchParams.get('n'));
      return redirect(n > 0 ? `/chain?n=${n - 1}` : `http://[::ffff:127.0.0.1]:${p}/secret`);
    }
    case '/loop':
      return redirect('/loop');
    case '/slow-headers':
      return void setTimeout(() => res.end(png), 5000).unref();
    case '/slow-body':
      res.writeHead(200, { 'content-type': 'image/png' });
      res.write(png.subarray(0, 10));
      return void setTimeout(() => res.end(), 5000).unref();
    case '/huge-declared':
      return void res.writeHead(200, { 'content-length': String(50 * 1024 * 1024) }).end();
    case '/huge-streamed': {
      res.writeHead(200, { 'content-type': 'image/png' });
      const chunk = Buffer.alloc(64 * 1024, 1);
      let sent = 0;
      const pump = () => {
        while (sent < 50 * 1024 * 1024) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      res.on('close', () => (sent = Infinity));
      return pump();
    }
    default:
      return void res.writeHead(404).end('nope');
  }
}

let connects = 0;
beforeAll(async () => {
  png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#123456' } }).png().toBuffer();
  canary = await startServer('::');
  origin = await startServer(PUBLIC, route);
  base = `http://${PUBLIC}:${origin.port}`;
  // Proof at the socket level too: count every TCP/TLS connect undici attempts.
  const realNet = net.connect;
  const realTls = tls.connect;
  vi.spyOn(net, 'connect').mockImplementation(((...args: Parameters<typeof net.connect>) => {
    connects++;
    return realNet(...args);
  }) as typeof net.connect);
  vi.spyOn(tls, 'connect').mockImplementation(((...args: Parameters<typeof tls.connect>) => {
    connects++;
    return realTls(...args);
  }) as typeof tls.connect);
});
afterAll(async () => {
  vi.restoreAllMocks();
  await canary?.close();
  await origin?.close();
});
afterEach(() => {
  connects = 0;
});

async function refused(url: string, o: FetchOptions = opts()): Promise<ImageInputError> {
  const err = await fetchImage(new URL(url), FIELD, o).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ImageInputError);
  expect((err as ImageInputError).field).toBe(FIELD);
  return err as ImageInputError;
}

describe('fetchImage: positive controls', () => {
  it('fetches an image from an allowed origin, following a redirect', async () => {
    expect((await fetchImage(new URL(`${base}/img.png`), FIELD, opts())).equals(png)).toBe(true);
    expect((await fetchImage(new URL(`${base}/to-img`), FIELD, opts())).equals(png)).toBe(true);
    expect(connects).toBe(3); // the socket spy sees undici's connects: its zero below is evidence
  });

  it('reaches the canary when the operator allow-lists loopback (so its silence elsewhere means something)', async () => {
    const before = canary.hits.length;
    await fetchImage(new URL(`http://127.0.0.1:${canary.port}/allowed`), FIELD, opts({ allowlist: parseAllowlist('127.0.0.0/8') }));
    expect(canary.hits.length).toBe(before + 1);
  });
});

describe('fetchImage: SSRF guard', () => {
  const forbidden = (p: () => number): Array<[string, RegExp]> => [
    [`http://127.0.0.1:${p()}/`, /loopback/],
    [`http://127.5.6.7:${p()}/`, /loopback/],
    [`http://localhost:${p()}/`, /loopback/],
    [`http://2130706433:${p()}/`, /loopback/],
    [`http://0x7f.1:${p()}/`, /loopback/],
    [`http://0x7f000001:${p()}/`, /loopback/],
    [`http://017700000001:${p()}/`, /loopback/],
    [`http://0177.0.0.1:${p()}/`, /loopback/],
    [`http://127.1:${p()}/`, /loopback/],
    [`http://0.0.0.0:${p()}/`, /unspecified/],
    [`http://0:${p()}/`, /unspecified/],
    [`http://[::1]:${p()}/`, /loopback/],
    [`http://[::ffff:127.0.0.1]:${p()}/`, /loopback/],
    [`http://[::ffff:7f00:1]:${p()}/`, /loopback/],
    [`http://[::127.0.0.1]:${p()}/`, /reserved/],
    [`http://[64:ff9b::7f00:1]:${p()}/`, /rfc6052/],
    [`http://192.0.2.2:${p()}/`, /reserved/],
    [`http://[fd00::2]:${p()}/`, /uniqueLocal/],
    [`http://10.0.0.1:${p()}/`, /private/],
    [`http://172.16.0.1:${p()}/`, /private/],
    [`http://172.31.255.254:${p()}/`, /private/],
    [`http://192.168.1.1:${p()}/`, /private/],
    [`http://169.254.169.254:${p()}/latest/meta-data/`, /linkLocal/],
    [`http://100.64.0.1:${p()}/`, /carrierGradeNat/],
    [`http://224.0.0.1:${p()}/`, /multicast/],
    [`http://[fe80::1]:${p()}/`, /linkLocal/],
    [`http://[fc00::1]:${p()}/`, /uniqueLocal/],
    [`https://127.0.0.1:${p()}/`, /loopback/],
  ];

  it('refuses every forbidden range and spelling before any socket is opened', async () => {
    for (const [url, reason] of forbidden(() => canary.port)) {
      const err = await refused(url);
      expect(err.reason, url).toMatch(reason);
    }
    expect(connects).toBe(0);
    expect(canary.hits.filter((h) => !h.endsWith('/allowed'))).toEqual([]);
  });

  it('refuses URLs with credentials even to an allowed origin', async () => {
    const before = origin.hits.length;
    expect((await refused(`http://user:pw@${PUBLIC}:${origin.port}/img.png`)).reason).toMatch(/credentials/);
    expect(origin.hits.length).toBe(before);
  });

  it.each([
    ['/to-canary', /127\.0\.0\.1 is a non-public address \(loopback\)/],
    ['/to-canary-decimal', /loopback/],
    ['/to-canary-v6', /loopback/],
    ['/to-metadata', /linkLocal/],
    ['/chain?n=2', /loopback/],
    ['/to-creds', /credentials/],
    ['/to-file', /scheme 'file'/],
  ])('re-checks every redirect hop: %s', async (path, reason) => {
    const before = canary.hits.length;
    expect((await refused(`${base}${path}`)).reason).toMatch(reason);
    expect(canary.hits.length).toBe(before);
  });

  it('bounds the redirect count', async () => {
    expect((await refused(`${base}/loop`)).reason).toBe('too many redirects (more than 3)');
    expect((await refused(`${base}/chain?n=1`, opts({ maxRedirects: 1 }))).reason).toMatch(/too many redirects/);
  });
});

describe('fetchImage: DNS rebinding', () => {
  let rebindOrigin: RecordingServer;
  let rebindCanary: RecordingServer;
  beforeAll(async () => {
    rebindOrigin = await startServer(PUBLIC, (_req, res) => res.end(png));
    // Same port on 127.0.0.1: what a re-resolved connection would reach.
    rebindCanary = await startServer('127.0.0.1', undefined, rebindOrigin.port);
  });
  afterAll(async () => {
    await rebindOrigin?.close();
    await rebindCanary?.close();
  });

  /** Answers `first` once, then 127.0.0.1 forever: the classic rebinding resolver. */
  function rebinding(first: string): HostResolver & { calls: number } {
    const resolver = Object.assign(
      async () => {
        resolver.calls++;
        return [{ address: resolver.calls === 1 ? first : '127.0.0.1', family: 4 as const }];
      },
      { calls: 0 },
    );
    return resolver;
  }

  it('connects to the address that was checked, not to a second answer', async () => {
    const resolve = rebinding(PUBLIC);
    const body = await fetchImage(new URL(`http://rebind.test:${rebindOrigin.port}/img`), FIELD, opts({ resolve }));
    expect(body.equals(png)).toBe(true);
    expect(resolve.calls).toBe(1);
    expect(rebindOrigin.hits).toHaveLength(1);
    expect(rebindCanary.hits).toEqual([]);
  });

  it('with a public first answer, never reaches loopback (the pinned public address is unreachable offline)', async () => {
    const resolve = rebinding('93.184.215.14');
    const err = await refused(
      `http://rebind.test:${rebindOrigin.port}/img`,
      opts({ resolve, timeoutMs: 1500, connectTimeoutMs: 300 }),
    );
    expect(err.reason).toMatch(/fetch failed|timed out/);
    expect(resolve.calls).toBe(1);
    expect(rebindCanary.hits).toEqual([]);
  });

  it('refuses a name whose first answer is already private', async () => {
    const resolve: HostResolver = async () => [{ address: '127.0.0.1', family: 4 }];
    expect((await refused(`http://rebind.test:${rebindOrigin.port}/img`, opts({ resolve }))).reason).toMatch(
      /rebind\.test' resolves to 127\.0\.0\.1/,
    );
    expect(rebindCanary.hits).toEqual([]);
  });
});

describe('fetchImage: limits', () => {
  it('times out a server that never sends headers', async () => {
    const started = performance.now();
    expect((await refused(`${base}/slow-headers`, opts({ timeoutMs: 300 }))).reason).toBe('fetch timed out after 300 ms');
    expect(performance.now() - started).toBeLessThan(1500);
  });

  it('times out a body that stalls', async () => {
    expect((await refused(`${base}/slow-body`, opts({ timeoutMs: 300 }))).reason).toMatch(/timed out/);
  });

  it('refuses a declared Content-Length over maxBytes without reading it', async () => {
    expect((await refused(`${base}/huge-declared`)).reason).toBe('image is too large: 50.0 MiB exceeds 1.0 MiB');
  });

  it('aborts a streamed body once it passes maxBytes', async () => {
    const started = performance.now();
    expect((await refused(`${base}/huge-streamed`)).reason).toBe('image is too large: more than 1.0 MiB');
    expect(performance.now() - started).toBeLessThan(1500);
  });

  it('reports HTTP errors and refused connections with the field', async () => {
    expect((await refused(`${base}/missing`)).reason).toMatch(/HTTP 404/);
    const closed = await startServer(PUBLIC);
    const port = closed.port;
    await closed.close();
    expect((await refused(`http://${PUBLIC}:${port}/`)).reason).toMatch(/fetch failed: ECONNREFUSED/);
  });
});

describe('guardedAgent (for other outbound calls such as callbacks)', () => {
  it('refuses a private target and pins an allowed one to its checked address', async () => {
    await expect(guardedAgent(new URL(`http://127.0.0.1:${canary.port}/`), 'callback_url', opts().allowlist)).rejects.toThrow(
      /callback_url: URL refused: 127\.0\.0\.1 is a non-public address \(loopback\)/,
    );
    let calls = 0;
    const resolve: HostResolver = async () => [{ address: ++calls === 1 ? PUBLIC : '127.0.0.1', family: 4 }];
    const url = new URL(`http://hook.test:${origin.port}/img.png`);
    const agent = await guardedAgent(url, 'callback_url', opts().allowlist, { resolve });
    try {
      const res = await request(url, { dispatcher: agent });
      expect(Buffer.from(await res.body.arrayBuffer()).equals(png)).toBe(true);
    } finally {
      await agent.destroy();
    }
    expect(calls).toBe(1);
  });
});

describe('fetchImage over https', () => {
  let tlsOrigin: https.Server;
  let tlsCanary: RecordingServer;
  let cert: string;
  let port: number;
  const tlsSeen: string[] = [];

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ks-tls-'));
    try {
      // A self-signed certificate for the name only; the test trusts it through FetchOptions.ca.
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
        '-subj', '/CN=img.rebind.test', '-addext', 'subjectAltName=DNS:img.rebind.test',
        '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
      cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
      const key = readFileSync(join(dir, 'key.pem'), 'utf8');
      tlsOrigin = https.createServer({ key, cert }, (req, res) => {
        tlsSeen.push(`${req.socket.localAddress} ${(req.socket as import('node:tls').TLSSocket).servername}`);
        res.end(png);
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    port = await new Promise<number>((r) => tlsOrigin.listen(0, PUBLIC, () => r((tlsOrigin.address() as import('node:net').AddressInfo).port)));
    tlsCanary = await startServer('127.0.0.1', undefined, port);
  });
  afterAll(async () => {
    tlsOrigin?.closeAllConnections();
    tlsOrigin?.close();
    await tlsCanary?.close();
  });

  it('pins the checked address and still verifies the certificate against the host name', async () => {
    let calls = 0;
    const resolve: HostResolver = async () => [{ address: ++calls === 1 ? PUBLIC : '127.0.0.1', family: 4 }];
    const url = new URL(`https://img.rebind.test:${port}/a.png`);
    expect((await fetchImage(url, FIELD, opts({ resolve, ca: cert }))).equals(png)).toBe(true);
    expect(tlsSeen).toEqual([`${PUBLIC} img.rebind.test`]);
    expect(calls).toBe(1);
    expect(tlsCanary.hits).toEqual([]);
  });

  it('refuses a certificate it cannot verify', async () => {
    const resolve: HostResolver = async () => [{ address: PUBLIC, family: 4 }];
    const err = await refused(`https://img.rebind.test:${port}/a.png`, opts({ resolve }));
    expect(err.reason).toMatch(/fetch failed: .*(SELF_SIGNED|CERT)/i);
  });
});

describe('fetchImage: connect timeout', () => {
  let blackhole: ChildProcess;
  let port: number;
  let filler: net.Socket;

  beforeAll(async () => {
    // A listener that never accepts, with its backlog filled: further SYNs get no answer, like a
    // firewalled host. Node always accepts, so a tiny Python child holds the socket.
    const python = existsSync(VENV_PYTHON) ? VENV_PYTHON : 'python3';
    const script = `import socket,sys,time\ns=socket.socket();s.bind(('${PUBLIC}',0));s.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(120)`;
    blackhole = spawn(python, ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    port = await new Promise<number>((resolve) => blackhole.stdout!.once('data', (d) => resolve(Number(String(d).trim()))));
    filler = net.createConnection({ host: PUBLIC, port });
    await new Promise((r) => filler.once('connect', r));
  });
  afterAll(() => {
    filler?.destroy();
    blackhole?.kill();
  });

  it('gives up on a connect that is never answered after connectTimeoutMs', async () => {
    const started = performance.now();
    const err = await refused(`http://${PUBLIC}:${port}/a.png`, opts({ connectTimeoutMs: 300, timeoutMs: 5000 }));
    expect(err.reason).toBe('fetch failed: connect timed out');
    expect(performance.now() - started).toBeLessThan(2000);
  });
});
