// How a callback delivery proves where it came from. Four schemes, chosen per run by the surface that made it:
//   hmac-server        hex HMAC-SHA256 of the body under the server's callback secret (Runflow-Signature)
//   standard-webhooks  the Standard Webhooks headers (webhook-id / -timestamp / -signature "v1,<base64>") under a
//                      whsec_ secret derived from the server's callback secret (what Replicate's clients verify)
//   hmac-caller        "sha256=<hex>" HMAC of the body under a secret the caller gave with the run, in the header
//                      the caller's protocol names
//   fal                fal's webhook headers (X-Fal-Webhook-Request-Id / -User-Id / -Timestamp / -Signature): hex
//                      ED25519 over "request_id\nuser_id\ntimestamp\nsha256_hex(body)", verified against the JWKS
//                      this server publishes (fal's receivers take the JWKS URL), plus Runflow-Signature as before
import { createHash, createHmac, createPrivateKey, createPublicKey, hkdfSync, sign as signBytes, type KeyObject } from 'node:crypto';
import type { DeliverySigning } from '../runs/types.ts';

export const sign = (secret: string, body: string): string => createHmac('sha256', secret).update(body).digest('hex');

/** The whsec_ secret Standard Webhooks deliveries are signed with: derived, so it needs no storage of its own. */
export function standardWebhooksSecret(serverSecret: string): string {
  return 'whsec_' + createHmac('sha256', serverSecret).update('standard-webhooks').digest('base64');
}

/** An Ed25519 public key as a JWK (RFC 8037), as fal's JWKS lists its webhook keys. */
export interface Ed25519Jwk {
  kty: 'OKP';
  crv: 'Ed25519';
  x: string;
  kid: string;
  alg: 'EdDSA';
  use: 'sig';
}

// PKCS#8 wrapping of a raw 32-byte Ed25519 seed (RFC 8410), the form node:crypto imports a seed from.
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

/**
 * The fal webhook key pair, derived from the server's callback secret (HKDF-SHA256 -> the Ed25519 seed), so
 * every api replica and worker sharing that secret signs with the same key and no key is stored anywhere.
 */
export function falWebhookKey(serverSecret: string): { privateKey: KeyObject; jwk: Ed25519Jwk } {
  const seed = Buffer.from(hkdfSync('sha256', serverSecret, '', 'kleinserve fal-webhook ed25519', 32));
  const privateKey = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
  const { x } = createPublicKey(privateKey).export({ format: 'jwk' }) as { x: string };
  // RFC 7638 thumbprint: a kid any replica computes alike, and that changes when the secret does.
  const kid = createHash('sha256').update(`{"crv":"Ed25519","kty":"OKP","x":"${x}"}`).digest('base64url');
  return { privateKey, jwk: { kty: 'OKP', crv: 'Ed25519', x, kid, alg: 'EdDSA', use: 'sig' } };
}

/** What GET /.well-known/jwks.json serves: the public half only. */
export const falWebhookJwks = (serverSecret: string): { keys: Ed25519Jwk[] } => ({ keys: [cachedFalKey(serverSecret).jwk] });

let falKeyCache: { secret: string; key: ReturnType<typeof falWebhookKey> } | undefined;
function cachedFalKey(serverSecret: string): ReturnType<typeof falWebhookKey> {
  if (falKeyCache?.secret !== serverSecret) falKeyCache = { secret: serverSecret, key: falWebhookKey(serverSecret) };
  return falKeyCache.key;
}

export interface SignedDelivery {
  /** Stable across the retries of one delivery (receivers deduplicate on it). */
  messageId: string;
  /** The run the delivery reports (fal's request_id). */
  runId: string;
  body: string;
  /** The delivery's signing spec as stored (JSON), or null for the server's HMAC. */
  signing: string | null | undefined;
}

export function signatureHeaders(serverSecret: string, d: SignedDelivery, now = Date.now()): Record<string, string> {
  const spec = d.signing ? (JSON.parse(d.signing) as DeliverySigning) : { scheme: 'hmac-server' as const };
  switch (spec.scheme) {
    case 'standard-webhooks': {
      const timestamp = String(Math.floor(now / 1000));
      const key = Buffer.from(standardWebhooksSecret(serverSecret).slice('whsec_'.length), 'base64');
      const mac = createHmac('sha256', key).update(`${d.messageId}.${timestamp}.${d.body}`).digest('base64');
      return { 'webhook-id': d.messageId, 'webhook-timestamp': timestamp, 'webhook-signature': `v1,${mac}` };
    }
    case 'fal': {
      const timestamp = String(Math.floor(now / 1000));
      const userId = spec.userId ?? 'anonymous';
      const digest = createHash('sha256').update(d.body).digest('hex');
      const signature = signBytes(null, Buffer.from(`${d.runId}\n${userId}\n${timestamp}\n${digest}`), cachedFalKey(serverSecret).privateKey);
      return {
        'x-fal-webhook-request-id': d.runId,
        'x-fal-webhook-user-id': userId,
        'x-fal-webhook-timestamp': timestamp,
        'x-fal-webhook-signature': signature.toString('hex'),
        // Kept: an HMAC under the server's secret reveals nothing, and receivers already checking it keep working.
        'runflow-signature': sign(serverSecret, d.body),
      };
    }
    case 'hmac-caller':
      return spec.secret ? { [spec.header ?? 'webhook-signature']: `sha256=${sign(spec.secret, d.body)}` } : {};
    default:
      return { 'runflow-signature': sign(serverSecret, d.body) };
  }
}
