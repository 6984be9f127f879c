// Readiness when the model can never load (the REAL engine pointed at weights that are not there): the engine
// exits "unavailable" and is not restarted; readiness must stay 503, and health turn 503 with ok:false, so
// neither a load balancer nor a wait loop ever treats this server as ready.
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startServer, tmpDir, waitFor, type ServerHandle } from '../helpers/server.ts';

let server: ServerHandle;

beforeAll(async () => {
  const missing = path.join(tmpDir('ks-no-model-'), 'FLUX.2-klein-4B');
  server = await startServer({ apiKeys: ['k_1'], waitReady: false, model: missing, env: { LOG_LEVEL: 'info' } });
});

afterAll(async () => {
  await server?.dispose();
});

it('answers 503 on readiness while starting and once the model is unavailable; health says ok:false', { timeout: 120_000 }, async () => {
  const first = await fetch(`${server.url}/v1/readiness`);
  expect(first.status).toBe(503);
  await waitFor(async () => (await server.health()).status === 'unavailable', 90_000, 'engine unavailable');
  const readiness = await fetch(`${server.url}/v1/readiness`);
  expect(readiness.status).toBe(503);
  expect(await readiness.json()).toEqual({ ready: false, status: 'unavailable' });
  const health = await fetch(`${server.url}/v1/health`);
  expect(health.status).toBe(503);
  expect(await health.json()).toMatchObject({ status: 'unavailable', ok: false });
  // No "ready" line is ever logged for a server that cannot run.
  expect(server.stderr.some((l) => l.includes('"msg":"ready"'))).toBe(false);
});
