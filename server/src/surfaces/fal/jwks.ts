// The public key fal_webhook deliveries are signed with, as a JWKS: fal's receivers verify against the JWKS that
// fal publishes, so one pointed here instead verifies kleinserve's deliveries with fal's documented code. Public,
// like fal's: it holds only the public half, derived from the callback secret (callbacks/signing.ts).
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Ed25519Jwk } from '../../callbacks/signing.ts';
import { JwksSchema } from './schemas.ts';

export async function falJwks(root: FastifyInstance, jwks: { keys: Ed25519Jwk[] }): Promise<void> {
  const app = root.withTypeProvider<ZodTypeProvider>();
  app.get(
    '/.well-known/jwks.json',
    {
      config: { public: true },
      schema: {
        summary: 'Public keys of fal_webhook signatures (X-Fal-Webhook-Signature), as fal publishes its own',
        tags: ['fal'],
        response: { 200: JwksSchema },
      },
    },
    async (_req, reply) => {
      // The key changes only with the callback secret; an hour of caching spares receivers a fetch per webhook.
      reply.header('cache-control', 'public, max-age=3600');
      return jwks;
    },
  );
}
