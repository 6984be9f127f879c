// Admission for roles with their own engines (`serve`): every run goes to the local dispatcher of its model's
// engine, which takes the decoded inline images along so it need not decode them again.
import type { Admission } from '../runs/admission.ts';
import type { DecodedImages } from '../runs/intake.ts';
import type { RunRecord } from '../runs/types.ts';
import { modelOfRun } from '../models/registry.ts';
import type { LocalDispatcher } from './local-dispatcher.ts';

export class LocalAdmission implements Admission {
  /** `dispatchers`: one, or one per served model (keyed by public model id). */
  constructor(private readonly dispatchers: LocalDispatcher | ReadonlyMap<string, LocalDispatcher>) {}

  async admit(run: RunRecord, decoded: DecodedImages, create: (run: RunRecord) => Promise<RunRecord>): Promise<RunRecord> {
    const d = this.dispatchers;
    // The run service refused models that no engine here serves, so this finds one.
    const dispatcher = d instanceof Map ? d.get(modelOfRun(run.model_id)) : (d as LocalDispatcher);
    // Held before the insert: once stored, the run is claimable, and the dispatcher wakes on its queued event.
    dispatcher?.hold(run.id, decoded);
    try {
      return await create({ ...run, region: null });
    } catch (err) {
      dispatcher?.drop(run.id);
      throw err;
    }
  }
}
