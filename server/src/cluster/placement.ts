// Where a new run goes, among the regions with live workers serving its model (their slots and queue are that
// model's): the home region while it is healthy and has idle engine slots, else the healthy region with the
// most idle slots, else any healthy region still under its queue limit (home first).
// When none qualifies: 429 RATE_LIMITED with Retry-After, or (backpressure "queue") park the run unplaced
// within a global bound until the sweeper can place it.
import { ServiceError } from '../errors.ts';
import { DEFAULT_MODEL } from '../models/registry.ts';
import { forModel, hasLiveWorkers, type RegionState } from './region-monitor.ts';

/** Regions as one model's runs see them (states without per-model detail count for every model). */
export function statesFor(states: RegionState[], model: string): RegionState[] {
  return states.map((s) => (s.models ? forModel(s, model) : s));
}

export interface PlacementOptions {
  /** Waiting jobs per region beyond which it takes no new runs. */
  regionQueueLimit: number;
  backpressure: 'reject' | 'queue';
  /** With backpressure "queue": unfinished runs allowed cluster-wide before 429. */
  globalQueueLimit: number;
  retryAfterSeconds: number;
}

/**
 * Picks a region from the latest states; `extra` counts runs placed since those states were read. With
 * `degraded`, a region that is only slow (reachable, live workers, but a job waited past the deadline)
 * still takes new runs when no healthy region can: slow beats refused. Moves never target such a region.
 */
export function chooseRegion(states: RegionState[], extra: Map<string, number>, opts: PlacementOptions, degraded = false): string | null {
  const healthy = states.filter((s) => s.healthy);
  const best = pick(healthy, extra, opts);
  if (best || !degraded) return best;
  return pick(states.filter(hasLiveWorkers), extra, opts);
}

function pick(healthy: RegionState[], extra: Map<string, number>, opts: PlacementOptions): string | null {
  const load = (s: RegionState) => s.waiting + s.active + (extra.get(s.name) ?? 0);
  const spare = (s: RegionState) => s.slots - load(s);
  const home = healthy.find((s) => s.home);
  if (home && spare(home) > 0) return home.name;
  const idle = healthy.filter((s) => spare(s) > 0).sort((a, b) => spare(b) - spare(a));
  if (idle.length) return idle[0].name;
  const open = healthy
    .filter((s) => s.waiting + (extra.get(s.name) ?? 0) < opts.regionQueueLimit)
    .sort((a, b) => Number(b.home) - Number(a.home) || load(a) / Math.max(1, a.slots) - load(b) / Math.max(1, b.slots));
  return open[0]?.name ?? null;
}

/**
 * Decides each new run's region synchronously during its create (from cached region states, plus what this
 * replica placed since), and refuses when the cluster is full. The decision itself goes on the run record.
 */
export class Placement {
  /** Runs placed since the last refresh, per model and region. */
  private extra = new Map<string, Map<string, number>>();
  /**
   * Unfinished runs cluster-wide, as of the last sweep plus what this replica admitted since. Other replicas'
   * admissions show up at the next sweep, so N replicas can overshoot the global bound by what they admit
   * within one sweep interval.
   */
  unfinished = 0;
  /** Runs this replica has admitted (placed or parked) since it started; only ever grows. */
  admitted = 0;

  constructor(
    private readonly states: () => RegionState[],
    private readonly opts: PlacementOptions,
  ) {}

  /**
   * Called with fresh states: placements they already count are forgotten. `admittedBefore` is `admitted` as it
   * was when the sweep began reading: runs admitted while its count was in flight may be missing from it, so
   * they are added back (counted twice at worst, which errs toward refusing, never past the bound).
   */
  refreshed(unfinished: number, admittedBefore = this.admitted): void {
    this.extra = new Map();
    this.unfinished = unfinished + (this.admitted - admittedBefore);
  }

  /**
   * The region for one new run of `model` (only regions with live workers serving it qualify); null parks it
   * (backpressure "queue") until the sweeper can place it. A run is never placed where nobody serves its model.
   */
  place(model: string = DEFAULT_MODEL): string | null {
    const states = statesFor(this.states(), model);
    let extra = this.extra.get(model);
    if (!extra) this.extra.set(model, (extra = new Map()));
    const region = chooseRegion(states, extra, this.opts, true);
    if (region) {
      extra.set(region, (extra.get(region) ?? 0) + 1);
      this.unfinished++;
      this.admitted++;
    } else if (this.opts.backpressure !== 'queue' || this.unfinished >= this.opts.globalQueueLimit) {
      const served = states.some(hasLiveWorkers);
      const why = served ? `every region serving ${model} is at its queue limit or unavailable` : `no live worker serves ${model} in any region`;
      throw new ServiceError('rate_limited', 'RATE_LIMITED', `${why}; retry later`, [], this.opts.retryAfterSeconds);
    } else {
      this.unfinished++;
      this.admitted++;
    }
    return region;
  }
}
