// Runflow's `pq` page tokens: opaque to clients, here the direction and the boundary run id, base64url JSON.
import { z } from 'zod';

export type PageToken = { next: string } | { prev: string };

const TokenSchema = z.union([z.strictObject({ next: z.string().min(1).max(64) }), z.strictObject({ prev: z.string().min(1).max(64) })]);

export const encodePageToken = (t: PageToken): string => Buffer.from(JSON.stringify(t)).toString('base64url');

export function decodePageToken(pq: string): PageToken | null {
  try {
    const parsed = TokenSchema.safeParse(JSON.parse(Buffer.from(pq, 'base64url').toString('utf8')));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}
