// What a user gets from the published packages: `npm pack` of @kleinserve/sdk and @kleinserve/server, installed
// into an empty directory with `npm install <tarballs>` (every other dependency from the registry), must give a
// working `import { Kleinserve } from '@kleinserve/sdk'` and a working `kleinserve` command: --version, `serve
// --model tiny` reaching health and serving the playground, and `edit` writing an image, with its errors worded
// for a person (help and the missing-file error are covered without installing, in test/cli/).
//
// One concession to this machine: better-sqlite3 downloads its prebuilt binary from GitHub, which is not
// reachable here, and compiling it takes minutes. prebuild-install's documented mirror setting
// (npm_config_better_sqlite3_binary_host) points it at a local server holding the binary the workspace install
// built from the same version; a different version finds no file there and compiles as usual.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PYTHON } from '../global-setup.ts';
import { testImage } from '../helpers/images.ts';
import { waitFor } from '../helpers/server.ts';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const KEY = 'ks_test_installed';
const run = promisify(execFile);
const version = (dir: string) => JSON.parse(fs.readFileSync(path.join(ROOT, dir, 'package.json'), 'utf8')).version as string;

let work: string;
let app: string;
let mirror: Server | undefined;
let server: ChildProcess | undefined;
let url = '';
const serverLog: string[] = [];

/** The workspace's better-sqlite3 binary as prebuild-install's mirror layout: /v{version}/{name}-v{version}-node-v{abi}-{platform}-{arch}.tar.gz */
async function startPrebuildMirror(): Promise<string> {
  const pkgDir = path.join(ROOT, 'node_modules/better-sqlite3');
  const v = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).version;
  const name = `better-sqlite3-v${v}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`;
  const tarball = path.join(work, name);
  await run('tar', ['-czf', tarball, '-C', pkgDir, 'build/Release/better_sqlite3.node']);
  mirror = createServer((req, res) => {
    if (req.url === `/v${v}/${name}`) fs.createReadStream(tarball).pipe(res.writeHead(200, { 'content-type': 'application/gzip' }));
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => mirror!.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(mirror.address() as AddressInfo).port}`;
}

/** The installed bin, as `npx --no-install kleinserve` or a shell would run it. */
async function kleinserve(args: string[], env: Record<string, string> = {}) {
  const bin = path.join(app, 'node_modules/.bin/kleinserve');
  const full: Record<string, string | undefined> = { ...process.env, ...env };
  if (!('KLEINSERVE_API_KEY' in env)) delete full.KLEINSERVE_API_KEY;
  try {
    const { stdout, stderr } = await run(bin, args, { cwd: app, env: full, timeout: 90_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-pkg-'));
  app = path.join(work, 'app');
  fs.mkdirSync(app);
  // sdk's prepare builds dist/; server's prepack adds the playground build and the engine's source.
  const packed = await run('npm', ['pack', '--silent', '--workspace', 'sdk', '--workspace', 'server', '--pack-destination', work], { cwd: ROOT });
  const tarballs = packed.stdout.trim().split('\n').filter((l) => l.endsWith('.tgz')).map((f) => path.join(work, f.trim()));
  expect(tarballs.map((t) => path.basename(t)).sort()).toEqual([`kleinserve-sdk-${version('sdk')}.tgz`, `kleinserve-server-${version('server')}.tgz`]);
  const host = await startPrebuildMirror();
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel', 'error', ...tarballs], {
    cwd: app,
    env: { ...process.env, npm_config_better_sqlite3_binary_host: host },
  });
}, 240_000);

afterAll(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server!.once('exit', r));
    server.kill('SIGTERM');
    await exited;
  }
  mirror?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

describe('installed from the packed tarballs', () => {
  it('imports the SDK as its README shows, with type declarations', async () => {
    const script = path.join(app, 'check.mjs');
    fs.writeFileSync(script, `import { Kleinserve, KleinserveError } from '@kleinserve/sdk';
const c = new Kleinserve({ baseUrl: 'http://127.0.0.1:1', apiKey: 'k' });
console.log(typeof Kleinserve, typeof KleinserveError, typeof c.edit, typeof c.runs.create);\n`);
    const { stdout } = await run(process.execPath, [script], { cwd: app });
    expect(stdout.trim()).toBe('function function function function');
    const pkg = JSON.parse(fs.readFileSync(path.join(app, 'node_modules/@kleinserve/sdk/package.json'), 'utf8'));
    const types = fs.readFileSync(path.join(app, 'node_modules/@kleinserve/sdk', pkg.exports['.'].types), 'utf8');
    expect(types).toContain('Kleinserve');
  });

  it('gives a kleinserve command that knows its version', async () => {
    const v = await kleinserve(['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout.trim()).toBe(version('server'));
  });

  it('serves the tiny model until healthy, with the playground, using the Python given by --python', async () => {
    const bin = path.join(app, 'node_modules/.bin/kleinserve');
    const env: Record<string, string | undefined> = { ...process.env, LOG_LEVEL: 'warn' };
    delete env.KLEINSERVE_PYTHON;
    server = spawn(bin, ['serve', '--model', 'tiny', '--port', '0', '--data', path.join(work, 'data'), '--api-key', KEY, '--python', PYTHON], {
      cwd: app,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    readline.createInterface({ input: server.stderr! }).on('line', (l) => serverLog.push(l));
    url = await new Promise<string>((resolve, reject) => {
      server!.once('exit', (code) => reject(new Error(`kleinserve serve exited ${code}:\n${serverLog.slice(-20).join('\n')}`)));
      readline.createInterface({ input: server!.stdout! }).on('line', (line) => {
        const msg = JSON.parse(line);
        if (msg.event === 'listening') resolve(msg.url);
      });
    });
    await waitFor(async () => ((await (await fetch(`${url}/v1/health`)).json()) as { ok: boolean }).ok === true, 120_000, 'installed server healthy');
    const page = await fetch(`${url}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('kleinserve');
  }, 180_000);

  it('edits an image with the installed command, and words its failures for a person', async () => {
    expect(url).not.toBe('');
    fs.writeFileSync(path.join(app, 'photo.jpg'), await testImage(96, 64));
    const ok = await kleinserve(['edit', '--server', url, '--api-key', KEY, '--image', 'photo.jpg', '--prompt', 'a watercolor', '--steps', '1', '-o', 'out.png']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('wrote out.png');
    const meta = await sharp(path.join(app, 'out.png')).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 96, 64]);

    const noKey = await kleinserve(['edit', '--server', url, '--image', 'photo.jpg', '--prompt', 'x', '-o', 'o.jpg'], { KLEINSERVE_API_KEYS: KEY });
    expect(noKey.code).toBe(1);
    expect(noKey.stderr).toContain('pass --api-key KEY or set KLEINSERVE_API_KEY');
    expect(noKey.stderr).toContain("KLEINSERVE_API_KEYS is set, but that is the server's list");

    const invalid = await kleinserve(['edit', '--server', url, '--image', 'photo.jpg', '--prompt', 'x', '--steps', '99', '-o', 'o.jpg'], { KLEINSERVE_API_KEY: KEY });
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toContain('(422 INPUT_VALIDATION_FAILED)');
    expect(invalid.stderr.match(/input\.steps/g)).toHaveLength(1);
  }, 120_000);
});
