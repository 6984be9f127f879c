// Admission for roles with their own engine (`serve`): every run goes to the local dispatcher, which takes
// the decoded inline images along so it need not decode them again.
import type { Admission } from '../runs/admission.ts';
import type { DecodedImages } from '../runs/intake.ts';
import type { RunRecord } from '../runs/types.ts';
import type { LocalDispatcher } from './local-dispatcher.ts';

export class LocalAdmission implements Admission {
  constructor(private readonly dispatcher: LocalDispatcher) {}

  async admit(run: RunRecord, decoded: DecodedImages, create: (run: RunRecord) => Promise<RunRecord>): Promise<RunRecord> {
    // Held before the insert: once stored, the run is claimable, and the dispatcher wakes on its queued event.
    this.dispatcher.hold(run.id, decoded);
    try {
      return await create({ ...run, region: null });
    } catch (err) {
      this.dispatcher.drop(run.id);
      throw err;
    }
  }
}
