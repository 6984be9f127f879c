// A newcomer's first start, on the REAL server and the tiny engine: no key configured (one is generated), the
// default info log captured. Checks what a first hour depends on: the key reaches an owner-only file and no
// log; readiness follows the engine (503 while loading, 200 once ready); one "ready" line and one request
// line per request (none per health poll); a client generated from /openapi.json by a standard generator
// (openapi-typescript + openapi-fetch) type-checks and works; /docs renders offline under its CSP; the
// official `openai` package lists models and gets typed errors; /metrics needs the key, counts engine restarts
// as a counter and labels requests by route template.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import createClient from 'openapi-fetch';
import OpenAI, { toFile } from 'openai';
import openapiTS, { astToString } from 'openapi-typescript';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dataUri, testImage } from '../helpers/images.ts';
import { startServer, waitFor, type ServerHandle } from '../helpers/server.ts';

let server: ServerHandle;
let key: string;
const early: { readiness: number; readinessBody: any; health: number; healthBody: any }[] = [];
const auth = () => ({ authorization: `Bearer ${key}` });
const logLines = () => server.stderr.flatMap((l) => (l.startsWith('{') ? [JSON.parse(l)] : []));

beforeAll(async () => {
  server = await startServer({ waitReady: false, env: { LOG_LEVEL: 'info' }, args: ['--metrics-require-key', 'yes'] });
  key = server.generatedKey!;
  // The engine is still importing torch when the server listens: readiness must say so.
  for (let i = 0; i < 3; i++) {
    const [r, h] = await Promise.all([fetch(`${server.url}/v1/readiness`), fetch(`${server.url}/v1/health`)]);
    early.push({ readiness: r.status, readinessBody: await r.json(), health: h.status, healthBody: await h.json() });
  }
  await waitFor(async () => (await fetch(`${server.url}/v1/readiness`)).status === 200, 120_000, 'readiness 200');
});

afterAll(async () => {
  await server?.dispose();
});

describe('keys and logs', () => {
  it('writes the generated key once to an owner-only file in the data dir, and to no log or stdout line', async () => {
    expect(key).toMatch(/^ks_live_/);
    const file = path.join(server.dataDir, 'api-key');
    expect(fs.readFileSync(file, 'utf8').trim()).toBe(key);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect((await fetch(`${server.url}/v1/auth/me`, { headers: auth() })).status).toBe(200);
    const created = server.stdout.map((l) => JSON.parse(l)).find((m) => m.event === 'api_key_created');
    expect(created).toMatchObject({ key_file: file, key_id: expect.stringMatching(/^key_[0-9a-f]{12}$/) });
    const keyPart = key.slice('ks_live_'.length);
    for (const line of [...server.stdout, ...server.stderr]) expect(line).not.toContain(keyPart);
  });

  it('logs one request line per request, none for health and readiness polls, and one "ready" line', async () => {
    for (let i = 0; i < 5; i++) await fetch(`${server.url}/v1/health`);
    for (let i = 0; i < 3; i++) await fetch(`${server.url}/v1/auth/me`, { headers: auth() });
    await new Promise((r) => setTimeout(r, 300));
    const requests = logLines().filter((l) => l.msg === 'request completed');
    expect(requests.filter((l) => l.req?.url === '/v1/auth/me')).toHaveLength(4); // 3 here + 1 in the key test
    expect(requests.filter((l) => /^\/v1\/(health|readiness)/.test(l.req?.url ?? ''))).toHaveLength(0);
    expect(logLines().filter((l) => l.msg === 'incoming request')).toHaveLength(0);
    const ready = logLines().filter((l) => l.msg === 'ready');
    expect(ready).toHaveLength(1);
    expect(ready[0]).toMatchObject({ level: 30, playground: `${server.url}/`, docs: `${server.url}/docs` });
  });
});

describe('readiness and health', () => {
  it('answers 503 while the engine loads and 200 once it is ready; health stays 200 with ok:false meanwhile', async () => {
    expect(early[0].readiness).toBe(503);
    expect(early[0].readinessBody).toMatchObject({ ready: false, status: expect.stringMatching(/^(starting|loading)$/) });
    expect(early[0].health).toBe(200);
    expect(early[0].healthBody).toMatchObject({ ok: false, status: 'starting' });
    const r = await fetch(`${server.url}/v1/readiness`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ ready: true, status: 'ready' });
    expect(await server.health()).toMatchObject({ ok: true, status: 'ok' });
  });
});

describe('OpenAPI', () => {
  let doc: any;
  beforeAll(async () => {
    doc = await (await fetch(`${server.url}/openapi.json`)).json();
  });

  it('names every operation uniquely, describes it and each response, and gives the server', () => {
    expect(doc.servers).toEqual([expect.objectContaining({ url: server.url })]);
    const ids: string[] = [];
    for (const [p, item] of Object.entries<any>(doc.paths)) {
      for (const [method, op] of Object.entries<any>(item)) {
        expect(op.operationId, `${method} ${p}`).toMatch(/^[a-z][A-Za-z0-9]*$/);
        ids.push(op.operationId);
        expect(op.description, `${method} ${p}`).toBeTruthy();
        for (const [code, res] of Object.entries<any>(op.responses)) {
          expect(res.description, `${method} ${p} ${code}`).not.toMatch(/^(Default Response)?$/);
        }
      }
    }
    expect(new Set(ids).size).toBe(ids.length);
    const op = (method: string, p: string) => doc.paths[p][method];
    expect(op('post', '/v1/images/edits').requestBody.content['multipart/form-data'].schema.properties.image.items.format).toBe('binary');
    expect(op('post', '/v1/images/edits').responses['200'].content['application/json'].schema).toBeTruthy();
    expect(op('post', '/v1/images/generations').requestBody.content['application/json'].schema.required).toContain('prompt');
    expect(op('get', '/v1/runs/{id}/events').responses['200'].content).toHaveProperty(['text/event-stream']);
    expect(op('get', '/v1/outputs/{run}/{file}').responses['200'].content).toHaveProperty(['image/png']);
    expect(op('get', '/v1/models/{model}').responses['404'].content['application/json'].schema.required).toContain('error');
    expect(op('get', '/v1/health').description).toMatch(/ok: false/);
  });

  it('generates a typed client (openapi-typescript + openapi-fetch) that type-checks and creates and reads a run', { timeout: 180_000 }, async () => {
    const dir = fs.mkdtempSync(path.join(import.meta.dirname, '.generated-'));
    try {
      fs.writeFileSync(path.join(dir, 'api.ts'), astToString(await openapiTS(new URL(`${server.url}/openapi.json`))));
      fs.writeFileSync(
        path.join(dir, 'use.ts'),
        `import createClient from 'openapi-fetch';
import type { operations, paths } from './api.ts';
const client = createClient<paths>({ baseUrl: 'http://127.0.0.1:8080' });
export async function use(): Promise<string> {
  const created = await client.POST('/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs', {
    body: { input: { prompt: 'a watercolor', image_urls: ['https://example.com/a.jpg'], steps: 2 } },
  });
  const run = await client.GET('/v1/runs/{id}', { params: { path: { id: created.data!.id } } });
  const models = await client.GET('/v1/models');
  const ids: string[] = models.data!.data.map((m) => m.id);
  // @ts-expect-error steps is typed as a number
  await client.POST('/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs', { body: { input: { prompt: 'p', image_urls: ['x'], steps: 'four' } } });
  const event: operations['streamRunEvents']['responses'][200]['content']['text/event-stream'] = { event: 'progress', data: '{}' };
  const edit: keyof operations = 'createImageEdit';
  return run.data!.status_code + ids.join() + event.data + edit;
}
`,
      );
      const tsc = spawnSync(
        process.execPath,
        [createRequire(import.meta.url).resolve('typescript/bin/tsc'), '--noEmit', '--strict', '--skipLibCheck', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--allowImportingTsExtensions', path.join(dir, 'use.ts')],
        { encoding: 'utf8', timeout: 150_000 },
      );
      expect(tsc.status, tsc.stdout + tsc.stderr).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }

    const client = createClient<any>({ baseUrl: server.url, headers: auth() });
    const image = dataUri(await testImage(96, 64, 'png'), 'image/png');
    const created = await client.POST('/v1/models/black-forest-labs/flux-2-klein-4b/edit/runs', {
      body: { input: { prompt: 'a watercolor', image_urls: [image], steps: 1, width: 64, height: 64 } },
      headers: { prefer: 'wait=60' },
    });
    expect(created.response.status).toBe(200);
    const read = await client.GET('/v1/runs/{id}', { params: { path: { id: created.data.id } } });
    expect(read.data).toMatchObject({ id: created.data.id, status_code: 'succeeded', output: { outputs: [expect.objectContaining({ width: 64, height: 64 })] } });
    const missing = await client.GET('/v1/runs/{id}', { params: { path: { id: 'no-such-run' } } });
    expect(missing.response.status).toBe(404);
    expect(missing.error).toMatchObject({ code: 'RUN_NOT_FOUND' });
  });

  it('serves an interactive reference at /docs from local assets, under a CSP it does not violate', { timeout: 120_000 }, async () => {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      const origins = new Set<string>();
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(m.text());
      });
      page.on('pageerror', (e) => problems.push(e.message));
      page.on('request', (r) => origins.add(new URL(r.url()).origin));
      const res = await page.goto(`${server.url}/docs`);
      expect(res!.headers()['content-security-policy']).toMatch(/script-src 'self';/);
      expect(res!.headers()['content-security-policy']).toMatch(/connect-src 'self';/);
      await page.locator('.opblock-summary-operation-id', { hasText: 'createEditRun' }).first().waitFor({ timeout: 60_000 });
      expect(await page.locator('.opblock').count()).toBeGreaterThan(10);
      expect(problems).toEqual([]);
      expect([...origins].filter((o) => o !== server.url && !o.startsWith('data:'))).toEqual([]);
    } finally {
      await browser.close();
    }
  });
});

describe('OpenAI compatibility', () => {
  const client = () => new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0 });

  it('lists and reads models in OpenAI shape', async () => {
    const page = await client().models.list();
    expect(page.data.map((m) => m.id)).toEqual(['black-forest-labs/flux-2-klein-4b/edit', 'black-forest-labs/flux-2-klein-4b']);
    for (const m of page.data) expect(m).toEqual({ id: m.id, object: 'model', created: expect.any(Number), owned_by: 'black-forest-labs' });
    const one = await client().models.retrieve('black-forest-labs/flux-2-klein-4b');
    expect(one.id).toBe('black-forest-labs/flux-2-klein-4b');
  });

  it('surfaces 404 and 422 as the package typed errors, with the message', async () => {
    const missing = await client().models.retrieve('gpt-4o').catch((e) => e);
    expect(missing).toBeInstanceOf(OpenAI.NotFoundError);
    expect(missing.message).toContain('model gpt-4o not found');
    expect(missing.error).toMatchObject({ type: 'invalid_request_error', param: 'model', code: 'MODEL_NOT_FOUND' });

    const noRoute = await client().images.createVariation({ image: await toFile(await testImage(64, 64, 'png'), 'a.png', { type: 'image/png' }) }).catch((e) => e);
    expect(noRoute).toBeInstanceOf(OpenAI.NotFoundError);
    expect(noRoute.message).toContain('no route for POST /v1/images/variations');

    const invalid = await client().images.generate({ prompt: 'x', size: '100x100' as never }).catch((e) => e);
    expect(invalid).toBeInstanceOf(OpenAI.UnprocessableEntityError);
    expect(invalid.message).toContain('size');
    expect(invalid.error).toMatchObject({ param: 'size', type: 'invalid_request_error' });
  });
});

describe('metrics', () => {
  const client = () => new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0 });

  it('needs the key, counts engine restarts as a counter, and labels requests by route template', async () => {
    const res = await client().images.generate({ prompt: 'two squares', n: 3, size: '64x64' as never, response_format: 'url', num_inference_steps: 1 } as never);
    expect(res.data).toHaveLength(3);
    for (const d of res.data!) expect((await fetch(d.url!)).status).toBe(200);
    const html = await (await fetch(`${server.url}/`)).text();
    const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]);
    for (const a of assets) expect((await fetch(`${server.url}${a}`)).status).toBe(200);

    expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    const scrape = await fetch(`${server.url}/metrics`, { headers: auth() });
    expect(scrape.status).toBe(200);
    const text = await scrape.text();
    expect(text).toMatch(/^# TYPE kleinserve_engine_restarts_total counter$/m);
    expect(text).toMatch(/^kleinserve_engine_restarts_total 0$/m);
    expect(text).not.toMatch(/^kleinserve_engine_restarts /m);
    const routes = new Set([...text.matchAll(/^kleinserve_http_request_seconds_count\{[^}]*route="([^"]*)"/gm)].map((m) => m[1]));
    expect(routes).toContain('/v1/outputs/:run/:file');
    expect(routes).toContain('/v1/images/generations');
    if (assets.length) expect(routes).toContain('/*');
    for (const r of routes) expect(r, 'a raw path in the route label').not.toMatch(/[0-9a-f]{32}|\/assets\/|[0-9a-f]{8}-[0-9a-f]{4}/);
  });
});
