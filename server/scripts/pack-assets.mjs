// `npm pack` of @kleinserve/server ships what the installed command needs from outside server/:
// the built playground (served at `/`) and the Python engine's source (so `pip install <package>/engine`
// installs the engine of the same version). `copy` runs before packing, `clean` after.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const SERVER = path.resolve(import.meta.dirname, '..');
const ROOT = path.resolve(SERVER, '..');
const PLAYGROUND = path.join(SERVER, 'playground');
const ENGINE = path.join(SERVER, 'engine');

function clean() {
  fs.rmSync(PLAYGROUND, { recursive: true, force: true });
  fs.rmSync(ENGINE, { recursive: true, force: true });
}

function copy() {
  clean();
  // Built fresh into the package, so the tarball never carries a stale page (and the checkout's web/dist is untouched).
  execFileSync('npm', ['run', 'build', '--workspace', 'web', '--silent', '--', '--outDir', PLAYGROUND, '--emptyOutDir', '--logLevel', 'error'], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const skip = /(__pycache__|\.egg-info|\.pyc$)/;
  fs.mkdirSync(ENGINE);
  for (const entry of ['pyproject.toml', 'README.md', 'kleinserve_engine']) {
    fs.cpSync(path.join(ROOT, 'engine', entry), path.join(ENGINE, entry), { recursive: true, filter: (src) => !skip.test(src) });
  }
}

const action = process.argv[2];
if (action === 'copy') copy();
else if (action === 'clean') clean();
else {
  console.error('usage: pack-assets.mjs copy|clean');
  process.exit(64);
}
