// Worker liveness lives in the worker's own region Redis: one key per worker with a TTL, rewritten every
// interval; each beat names the model the worker serves. A worker that dies (or loses its Redis) simply stops being counted once the TTL passes.
import type { Redis } from 'ioredis';
import type { EngineLimits, ModelFacts } from '../engine/limits.ts';
import { DEFAULT_MODEL } from '../models/registry.ts';

export const HEARTBEAT_PREFIX = 'kleinserve:worker:';

export interface Heartbeat {
  id: string;
  region: string;
  pid: number;
  concurrency: number;
  active: number;
  engine: string;
  limits: EngineLimits;
  /** The public id of the model this worker serves (registry.ts); absent in older workers' beats: flux-2-klein-4b. */
  model?: string;
  /** Its checkpoint's facts once loaded, so api replicas check requests against them at submit time. */
  model_info?: ModelFacts | null;
  at: number;
}

/** The model a heartbeat's worker serves. */
export const modelOf = (hb: Heartbeat): string => hb.model ?? DEFAULT_MODEL;

export class HeartbeatWriter {
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly redis: Redis,
    private readonly intervalMs: number,
    private readonly ttlMs: number,
    private readonly snapshot: () => Heartbeat,
  ) {}

  start(): void {
    const beat = () => {
      const hb = this.snapshot();
      this.redis.set(HEARTBEAT_PREFIX + hb.id, JSON.stringify(hb), 'PX', this.ttlMs).catch(() => {});
    };
    beat();
    this.timer = setInterval(beat, this.intervalMs);
  }

  async stop(id: string): Promise<void> {
    clearInterval(this.timer);
    await this.redis.del(HEARTBEAT_PREFIX + id).catch(() => {});
  }
}

export async function readHeartbeats(redis: Redis): Promise<Heartbeat[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', HEARTBEAT_PREFIX + '*', 'COUNT', 200);
    cursor = next;
    keys.push(...batch);
  } while (cursor !== '0');
  if (!keys.length) return [];
  const values = await redis.mget(...keys);
  return values.flatMap((v) => (v ? [JSON.parse(v) as Heartbeat] : []));
}
