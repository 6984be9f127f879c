// What a run cost: its GPU time (the engine's time on the run, without the time it waited in the engine's
// queue) at the operator's price per GPU-hour. Runs that never reached the engine cost nothing.
import type { RunRecord } from './types.ts';

export function gpuMs(run: RunRecord): number {
  const t = run.output?.timing;
  if (!t?.engine_total_ms) return 0;
  return Math.max(0, t.engine_total_ms - (t.engine_queue_ms ?? 0));
}

export function runCost(run: RunRecord, pricePerGpuHour: number): number {
  return (gpuMs(run) / 3_600_000) * pricePerGpuHour;
}
