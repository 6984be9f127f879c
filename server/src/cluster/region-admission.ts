// Admission for `api` replicas: placement picks a region whose workers serve the run's model (or parks the run,
// or refuses when none can take it), the region is written on the run as it is inserted, and the run is
// enqueued on that region's queue for its model.
// An enqueue that fails is not the request's failure: the sweeper (on any replica) enqueues stored runs again.
import type { Logger } from 'pino';
import { enqueueRun } from '../dispatch/bullmq-queue.ts';
import { modelOfRun } from '../models/registry.ts';
import type { Admission } from '../runs/admission.ts';
import type { RunRecord } from '../runs/types.ts';
import type { ClusterMetrics } from './metrics.ts';
import type { Placement } from './placement.ts';
import type { RegionMonitor } from './region-monitor.ts';
import { withTimeout } from './redis.ts';

export class RegionAdmission implements Admission {
  constructor(
    private readonly placement: Placement,
    private readonly monitor: RegionMonitor,
    private readonly metrics: ClusterMetrics,
    private readonly logger: Logger,
  ) {}

  async admit(run: RunRecord, _decoded: unknown, create: (run: RunRecord) => Promise<RunRecord>): Promise<RunRecord> {
    // Workers fetch inputs from the object store; decoded images stay behind and are freed with the request.
    const model = modelOfRun(run.model_id);
    const created = await create({ ...run, region: this.placement.place(model) });
    const region = created.region ? this.monitor.region(created.region) : undefined;
    const queue = region?.queues.get(model);
    if (region && queue) {
      withTimeout(enqueueRun(queue, created.id), 2000, 'enqueue').catch((err) => {
        this.metrics.enqueueErrors.inc({ region: region.spec.name });
        this.logger.warn({ err: err.message, run_id: created.id, region: region.spec.name }, 'enqueue failed; the sweeper will retry');
      });
    }
    return created;
  }
}
