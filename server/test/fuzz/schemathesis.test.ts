// Schemathesis fuzzes the live server through its own /openapi.json (the real engine on
// the tiny model behind it). Every check runs except positive_data_acceptance: no JSON schema can say
// "this string must decode as an image" or "image_size or width/height, not both", so schema-valid bodies
// are legitimately refused with 422 naming the field. Bounded: a fixed number of examples per operation
// and a fixed seed (KS_FUZZ_SEED / KS_FUZZ_EXAMPLES override, to explore further by hand). Most of the time
// goes to the coverage phase's schema-valid bodies on the text-to-image routes that hold until the run ends
// (each a real default-size run on the engine); one worker, as the engine is the bottleneck on 2 cores.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startServer, tmpDir, type ServerHandle } from '../helpers/server.ts';

const ST = path.resolve(import.meta.dirname, '../../../.venv/bin/schemathesis');
// Per-operation settings (where a documented 504 is an answer, not a server error): see the file.
const CONFIG = path.resolve(import.meta.dirname, 'schemathesis.toml');
const KEY = 'fuzz_key';
let server: ServerHandle;

beforeAll(async () => {
  server = await startServer({
    apiKeys: [KEY],
    // Held requests (Prefer: wait, sync_mode) answer within the fuzzer's timeout, and a small quota bounds
    // the engine backlog the fuzzer's runs create on 2 cores (the 429s it then gets are documented).
    env: { KLEINSERVE_WAIT_CAP_S: '5', KLEINSERVE_MAX_CONCURRENT_RUNS: '8' },
  });
});

afterAll(async () => {
  await server?.stop();
});

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

it('finds no 5xx and no response or status code that breaks the OpenAPI document', { timeout: 540_000 }, async () => {
  expect(fs.existsSync(ST), `${ST} missing: run scripts/setup.sh`).toBe(true);
  const reportDir = tmpDir('ks-fuzz-');
  const started = Date.now();
  const { code, out } = await run(ST, [
    '--config-file', CONFIG,
    'run', `${server.url}/openapi.json`,
    '-H', `Authorization: Bearer ${KEY}`,
    '--checks', 'all',
    '--exclude-checks', 'positive_data_acceptance',
    '--max-examples', process.env.KS_FUZZ_EXAMPLES ?? '5',
    '--seed', process.env.KS_FUZZ_SEED ?? '1',
    '--workers', '1',
    '--request-timeout', '30',
    // Routes that hold until the run ends (OpenAI's, fal's run, Runflow's flat route) may take as long as the timeout.
    '--max-response-time', '30',
    '--generation-database', 'none',
    '--no-color',
    '--report', 'junit', '--report-dir', reportDir,
  ]);
  fs.rmSync(reportDir, { recursive: true, force: true });
  console.log(`schemathesis took ${Math.round((Date.now() - started) / 1000)} s`);
  expect(code, out.slice(-12_000)).toBe(0);
  // Every operation in the document was reached.
  const doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as { paths: Record<string, object> };
  const operations = Object.values(doc.paths).reduce((n, item) => n + Object.keys(item).length, 0);
  expect(out).toContain(`Tested: ${operations}`);
  const health = await server.health();
  expect(health.ok).toBe(true);
});
