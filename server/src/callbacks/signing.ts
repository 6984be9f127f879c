// How a callback delivery proves where it came from. Three schemes, chosen per run by the surface that made it:
//   hmac-server        hex HMAC-SHA256 of the body under the server's callback secret (Runflow-Signature)
//   standard-webhooks  the Standard Webhooks headers (webhook-id / -timestamp / -signature "v1,<base64>") under a
//                      whsec_ secret derived from the server's callback secret (what Replicate's clients verify)
//   hmac-caller        "sha256=<hex>" HMAC of the body under a secret the caller gave with the run, in the header
//                      the caller's protocol names
import { createHmac } from 'node:crypto';
import type { DeliverySigning } from '../runs/types.ts';

export const sign = (secret: string, body: string): string => createHmac('sha256', secret).update(body).digest('hex');

/** The whsec_ secret Standard Webhooks deliveries are signed with: derived, so it needs no storage of its own. */
export function standardWebhooksSecret(serverSecret: string): string {
  return 'whsec_' + createHmac('sha256', serverSecret).update('standard-webhooks').digest('base64');
}

export interface SignedDelivery {
  /** Stable across the retries of one delivery (receivers deduplicate on it). */
  messageId: string;
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
    case 'hmac-caller':
      return spec.secret ? { [spec.header ?? 'webhook-signature']: `sha256=${sign(spec.secret, d.body)}` } : {};
    default:
      return { 'runflow-signature': sign(serverSecret, d.body) };
  }
}
