// The fal webhook key is derived from the callback secret, so replicas and workers configured with the same
// secret sign with one key and need none stored: each derivation below runs in its own process, as they would.
import { execFileSync } from 'node:child_process';
import { createHash, createPublicKey, verify } from 'node:crypto';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { falWebhookJwks, signatureHeaders } from '../../src/callbacks/signing.ts';

const TSX = path.resolve(import.meta.dirname, '../../../node_modules/.bin/tsx');
const SIGNING = path.resolve(import.meta.dirname, '../../src/callbacks/signing.ts');

/** The JWKS a fresh process derives from `secret`. */
function jwksInAnotherProcess(secret: string): { keys: { x: string; kid: string }[] } {
  const script = `import { falWebhookJwks } from ${JSON.stringify(SIGNING)}; console.log(JSON.stringify(falWebhookJwks(process.env.SECRET)));`;
  return JSON.parse(execFileSync(TSX, ['--eval', script], { env: { ...process.env, SECRET: secret }, encoding: 'utf8' }));
}

describe('fal webhook key derivation', () => {
  it('the same secret gives the same public key in separate processes; another secret another key', () => {
    const a = jwksInAnotherProcess('shared-cluster-secret');
    const b = jwksInAnotherProcess('shared-cluster-secret');
    const other = jwksInAnotherProcess('another-secret');
    expect(a.keys[0].x).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(b.keys[0]).toEqual(a.keys[0]);
    expect(falWebhookJwks('shared-cluster-secret').keys[0]).toEqual(a.keys[0]);
    expect(other.keys[0].x).not.toBe(a.keys[0].x);
    expect(other.keys[0].kid).not.toBe(a.keys[0].kid);
  }, 60_000);

  it('a delivery signed here verifies under the published key, and not under another secret\'s', () => {
    const body = '{"status":"OK"}';
    const h = signatureHeaders('s1', { messageId: 'r.1', runId: 'r', body, signing: JSON.stringify({ scheme: 'fal', userId: 'key_abc' }) });
    const digest = createHash('sha256').update(body).digest('hex');
    const message = Buffer.from(`r\nkey_abc\n${h['x-fal-webhook-timestamp']}\n${digest}`);
    const keyOf = (secret: string) => createPublicKey({ key: falWebhookJwks(secret).keys[0] as any, format: 'jwk' });
    expect(h['x-fal-webhook-request-id']).toBe('r');
    expect(verify(null, message, keyOf('s1'), Buffer.from(h['x-fal-webhook-signature'], 'hex'))).toBe(true);
    expect(verify(null, message, keyOf('s2'), Buffer.from(h['x-fal-webhook-signature'], 'hex'))).toBe(false);
  });
});
