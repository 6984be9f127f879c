// Engine step progress crosses processes through the region's Redis pub/sub: the worker publishes what its
// dispatcher sees, every api replica relays it onto its own bus, so SSE progress frames work in a cluster.
// Best effort by design: a lost frame only means one fewer progress tick, never a wrong run state.
import type { Redis } from 'ioredis';
import type { RunEvent, RunEventBus } from '../runs/events.ts';
import { producerConnection } from './redis.ts';

export const PROGRESS_CHANNEL = 'kleinserve:progress';

export function publishProgress(bus: RunEventBus, redis: Redis): () => void {
  return bus.subscribe('*', (ev) => {
    if (ev.type === 'progress') redis.publish(PROGRESS_CHANNEL, JSON.stringify(ev)).catch(() => {});
  });
}

export function relayProgress(redisUrl: string, bus: RunEventBus): Redis {
  const sub = producerConnection(redisUrl);
  // A subscriber must re-subscribe after every reconnect; ioredis does that for us (autoResubscribe).
  sub.subscribe(PROGRESS_CHANNEL).catch(() => {});
  sub.on('ready', () => void sub.subscribe(PROGRESS_CHANNEL).catch(() => {}));
  sub.on('message', (_channel: string, message: string) => {
    try {
      const ev = JSON.parse(message) as RunEvent;
      if (ev.type === 'progress' && typeof ev.run_id === 'string') bus.publish(ev);
    } catch {
      // not ours
    }
  });
  return sub;
}
