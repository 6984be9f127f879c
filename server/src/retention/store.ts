// The retention seam: which terminal runs have objects to erase or records to drop. Only terminal runs are
// ever returned or deleted, which is what makes sweeping safe while runs are in flight.
import type { RunRecord, RunStatus } from '../runs/types.ts';

export interface RetentionStore {
  /** Terminal runs in `statuses` completed before `before` whose objects were not erased yet. */
  unerased(statuses: RunStatus[], before: number, limit: number): Promise<RunRecord[]>;
  markErased(runId: string, at: number): Promise<void>;
  /** Terminal runs created before `before` (their records are due for deletion). */
  expiredRecords(before: number, limit: number): Promise<RunRecord[]>;
  /** Deletes a terminal run's record and its settled deliveries; false if the run is not terminal (or gone). */
  deleteRecord(runId: string): Promise<boolean>;
  /** Which of `runIds` still have a run record (in any status). */
  existingRuns(runIds: string[]): Promise<Set<string>>;
}
