// The delivery half of cluster mode: one BullMQ queue per (region, model), job id = run id, payload = the run
// id only (inputs stay in Postgres and the object store). Only workers serving a model consume its queue, so a
// run never reaches another model's engine. Adding an id that is already queued or active is a no-op, so every
// re-enqueue (sweeper, mover, retried request) is safe.
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { DEFAULT_MODEL, findModel } from '../models/registry.ts';

export const QUEUE_NAME = 'kleinserve-runs';

/** A model's queue in its region's Redis; flux-2-klein-4b keeps the name it had before there were several. */
export function queueName(model: string): string {
  if (model === DEFAULT_MODEL) return QUEUE_NAME;
  return `${QUEUE_NAME}-${findModel(model)?.short ?? model.replace(/[^a-z0-9-]+/gi, '-')}`;
}

export interface RunJobData {
  runId: string;
}

export function openQueue(connection: Redis, model: string = DEFAULT_MODEL): Queue<RunJobData> {
  return new Queue<RunJobData>(queueName(model), {
    connection,
    defaultJobOptions: {
      // Postgres keeps the record; finished jobs only cost Redis memory, and removing them lets a run be
      // re-enqueued under the same id if it ever needs to be.
      removeOnComplete: true,
      removeOnFail: true,
      // Infrastructure errors only (e.g. Postgres unreachable); run outcomes never throw.
      attempts: 5,
      backoff: { type: 'exponential', delay: 1000 },
    },
  });
}

export async function enqueueRun(queue: Queue<RunJobData>, runId: string): Promise<void> {
  await queue.add('run', { runId }, { jobId: runId });
}
