// Prefer: wait — hold a request until its run is terminal or the wait runs out, driven by the event bus.
import type { RunEventBus } from './events.ts';
import type { RunStore } from './store.ts';
import { isTerminal, type RunRecord } from './types.ts';

/** Parses `Prefer: wait` / `wait=N` (RFC 7240); returns seconds to wait, capped, or null when absent. */
export function parsePreferWait(header: string | string[] | undefined, capSeconds: number): number | null {
  if (!header) return null;
  const prefs = (Array.isArray(header) ? header.join(',') : header).split(/[,;]/).map((p) => p.trim().toLowerCase());
  for (const p of prefs) {
    const m = /^wait(?:\s*=\s*"?(\d+(?:\.\d+)?)"?)?$/.exec(p);
    if (m) return Math.min(m[1] === undefined ? capSeconds : Number(m[1]), capSeconds);
  }
  return null;
}

export async function waitForTerminal(
  store: RunStore,
  bus: RunEventBus,
  run: RunRecord,
  seconds: number,
  signal?: AbortSignal,
): Promise<RunRecord> {
  if (isTerminal(run.status) || seconds <= 0) return run;
  let latest = run;
  await new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      unsubscribe();
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const unsubscribe = bus.subscribe(run.id, (ev) => {
      if (ev.type === 'status') {
        latest = ev.run;
        if (isTerminal(ev.run.status)) done();
      }
    });
    const timer = setTimeout(done, seconds * 1000);
    signal?.addEventListener('abort', done, { once: true });
    // The run may have finished between the caller's read and our subscription.
    store.get(run.id).then((fresh) => {
      if (fresh && isTerminal(fresh.status)) {
        latest = fresh;
        done();
      }
    });
  });
  return latest;
}
