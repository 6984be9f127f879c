// The delivery half of cluster mode: one BullMQ queue per region, job id = run id, payload = the run id only
// (inputs stay in Postgres and the object store). Adding an id that is already queued or active is a no-op,
// so every re-enqueue (sweeper, mover, retried request) is safe.
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';

export const QUEUE_NAME = 'kleinserve-runs';

export interface RunJobData {
  runId: string;
}

export function openQueue(connection: Redis): Queue<RunJobData> {
  return new Queue<RunJobData>(QUEUE_NAME, {
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
