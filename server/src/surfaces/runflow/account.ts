// GET /v1/auth/me: who the presented key is. The key itself never leaves the server: its id is a prefix of
// the key's SHA-256 (what the server stores), enough to tell keys apart in logs and dashboards.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { callerOf } from '../../http/auth.ts';
import { errorResponses } from './schemas.ts';

const MeSchema = z.object({
  id: z.string().describe('key_ + the first 12 hex digits of the key\'s SHA-256'),
  type: z.literal('api_key'),
});

export const accountRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get(
    '/v1/auth/me',
    { schema: { summary: 'The API key this request authenticated with (never the key itself)', tags: ['auth'], response: { 200: MeSchema, ...errorResponses } } },
    async (req) => ({ id: `key_${callerOf(req).scope.slice(0, 12)}`, type: 'api_key' as const }),
  );
};
