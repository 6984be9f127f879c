// Erasing one run's stored objects: its inline inputs and its outputs. Idempotent, so the terminal-event
// hook, the sweeper and DELETE /v1/runs/{id} can all call it, in any order, as often as they like.
import fsp from 'node:fs/promises';
import type { RunRecord } from '../runs/types.ts';
import type { ObjectStore } from '../storage/object-store.ts';

export function objectKeysOf(run: RunRecord): string[] {
  const inputs = run.input.images.flatMap((img) => (img.kind === 'inline' ? [img.key] : []));
  const outputs = run.output?.images.map((img) => img.key) ?? [];
  return [...inputs, ...outputs];
}

export async function eraseRunObjects(objects: ObjectStore, run: RunRecord): Promise<void> {
  await Promise.all(objectKeysOf(run).map((key) => objects.delete(key)));
  if (!objects.localPath) return;
  // On disk each run has its own input and output folders; drop them once empty (rmdir refuses otherwise,
  // which is right: a late writer's file is then the dispatcher's to clean up, not ours to race).
  for (const dir of [`inputs/${run.id}`, `outputs/${run.id}`]) {
    await fsp.rmdir(objects.localPath(dir)).catch(() => {});
  }
}
