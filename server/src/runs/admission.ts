// Admission: the one step, per role, that decides where a new run goes and hands it there. The decision is
// written on the run record itself (`region`), so the store, the sweeper and every replica read it from the
// run, never from a side table. `serve` and workers admit to the local engine; `api` replicas to a region.
import type { DecodedImages } from './intake.ts';
import type { RunRecord } from './types.ts';

export interface Admission {
  /**
   * Decides where `run` goes (or refuses with a ServiceError, e.g. a full cluster), stores it through
   * `create` with the decision on it, and hands it to its destination. `decoded` holds the inline images
   * the intake already decoded; the destination may use them once, and must drop them when the run ends.
   */
  admit(run: RunRecord, decoded: DecodedImages, create: (run: RunRecord) => Promise<RunRecord>): Promise<RunRecord>;
}
