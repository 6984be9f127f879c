// The published shape: `tsc -p tsconfig.build.json` emits ESM + .d.ts that Node can import through "exports".
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');

describe('package', () => {
  it('builds to ESM with types that match package.json exports', async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-sdk-dist-'));
    const tsc = path.resolve(ROOT, '../node_modules/typescript/bin/tsc');
    execFileSync(process.execPath, [tsc, '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', out], { stdio: 'pipe' });
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    const entry = pkg.exports['.'];
    expect(fs.existsSync(path.join(out, path.basename(entry.types)))).toBe(true);
    const mod = await import(pathToFileURL(path.join(out, path.basename(entry.import))).href);
    expect(typeof mod.Kleinserve).toBe('function');
    expect(typeof mod.KleinserveError).toBe('function');
    const dts = fs.readFileSync(path.join(out, 'client.d.ts'), 'utf8');
    expect(dts).toContain('edit(params: EditParams');
  });
});
