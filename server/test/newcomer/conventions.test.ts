// Fast checks of the pieces the first-start e2e test relies on: the derived operationIds, when /metrics needs a
// key, and the key list (generated key file, add/revoke seen by a running server's ring).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { addKey, hashKey, keyId, listKeys, loadKeys, revokeKey } from '../../src/auth/keys.ts';
import { metricsRequireKey } from '../../src/http/metrics.ts';
import { conventionalOperationId } from '../../src/http/openapi.ts';

describe('derived operationIds', () => {
  it.each([
    ['get', '/v1/runs', 'listRuns'],
    ['get', '/v1/runs/{id}', 'getRun'],
    ['delete', '/v1/runs/{id}', 'deleteRun'],
    ['post', '/v1/runs/{id}/cancel', 'cancelRun'],
    ['put', '/fal/queue/requests/{id}/cancel', 'cancelFalQueueRequest'],
    ['get', '/v1/predictions/{id}/stream', 'getPredictionStream'],
    ['get', '/queue/requests/{id}/status', 'getQueueRequestStatus'],
    ['get', '/v1/readiness', 'getReadiness'],
    ['post', '/v1/images/edits', 'createImageEdit'],
    ['post', '/v1/asset-uploads/{id}/confirmations', 'createAssetUploadConfirmation'],
    ['get', '/v1/models', 'listModels'],
    ['get', '/v1/models/{model}', 'getModel'],
  ])('%s %s -> %s', (method, route, id) => {
    expect(conventionalOperationId(method, route)).toBe(id);
  });
});

describe('metrics key', () => {
  it('auto requires a key unless bound to loopback; yes/no override', () => {
    for (const host of ['127.0.0.1', '127.0.0.2', '::1', '[::1]', 'localhost']) expect(metricsRequireKey('auto', host), host).toBe(false);
    for (const host of ['0.0.0.0', '::', '10.1.2.3', 'example.internal']) expect(metricsRequireKey('auto', host), host).toBe(true);
    expect(metricsRequireKey('yes', '127.0.0.1')).toBe(true);
    expect(metricsRequireKey('no', '0.0.0.0')).toBe(false);
  });
});

describe('key list', () => {
  const dirs: string[] = [];
  const dataDir = () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-keys-'));
    dirs.push(d);
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });

  it('a first start writes the key once to an owner-only file and only hashes to the list', () => {
    const dir = dataDir();
    const first = loadKeys([], dir);
    expect(first.generated).toMatch(/^ks_live_[A-Za-z0-9]{32}$/);
    expect(first.keyFile).toBe(path.join(dir, 'api-key'));
    expect(fs.readFileSync(first.keyFile!, 'utf8').trim()).toBe(first.generated);
    expect(fs.statSync(first.keyFile!).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(dir, 'api-keys.json')).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(path.join(dir, 'api-keys.json'), 'utf8')).not.toContain(first.generated!);
    expect(listKeys(dir)).toEqual([keyId(hashKey(first.generated!))]);
    const second = loadKeys([], dir);
    expect(second.generated).toBeNull();
    expect(second.ring.check(first.generated!)).toBe(true);
  });

  it('keys added or revoked while a ring is in use take effect without a restart', async () => {
    const dir = dataDir();
    const { ring, generated } = loadKeys([], dir);
    const added = addKey(dir);
    await new Promise((r) => setTimeout(r, 1100));
    expect(ring.check(added.key)).toBe(true);
    expect(listKeys(dir)).toEqual([keyId(hashKey(generated!)), added.id]);

    expect(revokeKey(dir, keyId(hashKey(generated!)))).toBe(keyId(hashKey(generated!)));
    // The plaintext copy of the revoked key goes with it.
    expect(fs.existsSync(path.join(dir, 'api-key'))).toBe(false);
    await new Promise((r) => setTimeout(r, 1100));
    expect(ring.check(generated!)).toBe(false);
    expect(ring.check(added.key)).toBe(true);
    expect(() => revokeKey(dir, 'key_000000000000')).toThrow(/no key key_000000000000.*keys list/);
  });

  it('configured keys replace the list', () => {
    const dir = dataDir();
    const { ring, generated, keyFile } = loadKeys(['given_key'], dir);
    expect(generated).toBeNull();
    expect(keyFile).toBeNull();
    expect(ring.check('given_key')).toBe(true);
    expect(fs.existsSync(path.join(dir, 'api-key'))).toBe(false);
  });
});
