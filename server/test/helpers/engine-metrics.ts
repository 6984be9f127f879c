// The engine's own batching, read from the server's /metrics, for tests that must know whether runs shared a batch.
import { expect } from 'vitest';

/** Images the engine denoised in batches of more than one, from its batch-size histogram on /metrics. */
export async function imagesBatchedWithOthers(serverUrl: string): Promise<number> {
  const text = await (await fetch(`${serverUrl}/metrics`)).text();
  const value = (re: RegExp) => Number(text.match(re)?.[1] ?? NaN);
  const images = value(/^kleinserve_engine_batch_size_sum\s+(\S+)$/m);
  const alone = value(/^kleinserve_engine_batch_size_bucket\{le="1(?:\.0)?"\}\s+(\S+)$/m);
  expect(Number.isFinite(images) && Number.isFinite(alone), 'engine batch histogram on /metrics').toBe(true);
  return images - alone;
}
