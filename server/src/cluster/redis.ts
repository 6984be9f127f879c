// Redis connections per region. Producers fail fast when Redis is gone (a region outage must not hang a
// request); BullMQ workers need maxRetriesPerRequest: null and reconnect forever.
import { Redis } from 'ioredis';

export function producerConnection(url: string): Redis {
  const r = new Redis(url, {
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    connectTimeout: 1000,
    retryStrategy: () => 500,
    lazyConnect: false,
  });
  r.on('error', () => {}); // health checks report it; ioredis keeps reconnecting
  return r;
}

export function workerConnection(url: string): Redis {
  const r = new Redis(url, { maxRetriesPerRequest: null, connectTimeout: 1000, retryStrategy: () => 500 });
  r.on('error', () => {});
  return r;
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms))),
  ]);
}
