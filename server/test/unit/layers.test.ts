// The house drawn from its imports: data flows request -> surface -> run service -> dispatch -> engine, and
// a lower layer never imports an upper one. Fails on any upward arrow, naming the file and the import.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '../../src');

function sources(dir = SRC): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Every import of a file: package names as written, local files as paths relative to src/. */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'([^']+)'|import\(\s*'([^']+)'\s*\)/g)].map((m) => m[1] ?? m[2]);
  return specs.map((s) => (s.startsWith('.') ? path.relative(SRC, path.resolve(path.dirname(file), s)) : s));
}

const rel = (f: string) => path.relative(SRC, f);
const HTTP_PACKAGE = /^(fastify|fastify-.*|@fastify\/.*)$/;
/** The HTTP layer and everything above it. */
const UPPER = /^(http|surfaces|roles|plugins)\/|^app\.ts$|^cli\.ts$/;
/** Below HTTP: the run service and everything it drives. */
const LOWER = /^(runs|dispatch|idempotency|cluster|quotas|engine|images|storage|retention|callbacks|auth|adapters|models)\/|^(errors|metrics|policy-config|config)\.ts$/;

describe('layering', () => {
  const files = sources();

  it('finds the layers it checks', () => {
    for (const dir of ['runs', 'dispatch', 'idempotency', 'cluster', 'quotas', 'engine', 'http', 'surfaces/runflow', 'surfaces/openai']) {
      expect(files.some((f) => rel(f).startsWith(dir + '/')), dir).toBe(true);
    }
  });

  it('nothing below HTTP imports Fastify or the HTTP layer', () => {
    const upward = files
      .filter((f) => LOWER.test(rel(f)))
      .flatMap((f) => importsOf(f).filter((i) => HTTP_PACKAGE.test(i) || UPPER.test(i)).map((i) => `${rel(f)} -> ${i}`));
    expect(upward).toEqual([]);
  });

  it('surfaces import neither roles nor each other', () => {
    const bad = files
      .filter((f) => rel(f).startsWith('surfaces/'))
      .flatMap((f) => {
        const own = rel(f).split('/').slice(0, 2).join('/');
        return importsOf(f)
          .filter((i) => /^(roles\/|app\.ts)/.test(i) || (/^surfaces\/[^/]+\//.test(i) && !i.startsWith(own + '/')))
          .map((i) => `${rel(f)} -> ${i}`);
      });
    expect(bad).toEqual([]);
  });

  it('"create a run" exists once: only the run service takes runs in', () => {
    const callers = files.filter((f) => /(?<!function )\bintakeRun\(|lifecycle\.create\(/.test(fs.readFileSync(f, 'utf8'))).map(rel);
    expect(callers).toEqual(['runs/service.ts']);
  });
});
