// `kleinserve status`: the cluster at a glance, from the same sources the api uses (region Redis, Postgres).
import { parseArgs } from 'node:util';
import { RegionMonitor } from './cluster/region-monitor.ts';
import { PostgresStore } from './runs/postgres-store.ts';
import { apiRegions } from './roles/cluster-config.ts';

export async function status(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      'database-url': { type: 'string' },
      region: { type: 'string', multiple: true },
      json: { type: 'boolean' },
    },
  });
  const regions = apiRegions(values);
  const url = values['database-url'] ?? process.env.DATABASE_URL;
  const monitor = new RegionMonitor(regions, { waitDeadlineMs: Number(process.env.KLEINSERVE_WAIT_DEADLINE_MS ?? 60_000), checkTimeoutMs: 1500 });
  try {
    const states = await monitor.refresh();
    let runs: Awaited<ReturnType<PostgresStore['countsByRegion']>> = [];
    let dbError: string | null = null;
    if (url) {
      const store = await PostgresStore.open(url, { max: 1 }).catch((err: Error) => {
        dbError = err.message;
        return null;
      });
      if (store) {
        runs = await store.countsByRegion();
        await store.close();
      }
    } else dbError = 'no --database-url / DATABASE_URL given';
    if (values.json) {
      console.log(JSON.stringify({ regions: states, runs, database_error: dbError }, null, 2));
      return;
    }
    console.log('REGION      HEALTH     WORKERS SLOTS WAITING ACTIVE OLDEST_WAIT  REASON');
    for (const s of states) {
      console.log(
        [
          (s.name + (s.home ? '*' : '')).padEnd(11),
          (s.healthy ? 'healthy' : 'UNHEALTHY').padEnd(10),
          String(s.workers).padStart(7),
          String(s.slots).padStart(5),
          String(s.waiting).padStart(7),
          String(s.active).padStart(6),
          `${(s.oldestWaitMs / 1000).toFixed(1)}s`.padStart(11),
          ' ' + (s.reason ?? ''),
        ].join(' '),
      );
    }
    console.log('(* = home region)\n');
    if (dbError) {
      console.log(`runs: unavailable (${dbError})`);
      return;
    }
    const byRegion = new Map<string, Record<string, number>>();
    for (const r of runs) {
      const row = byRegion.get(r.region ?? '(unplaced)') ?? {};
      row[r.status] = r.n;
      row.moves = (row.moves ?? 0) + r.moves;
      byRegion.set(r.region ?? '(unplaced)', row);
    }
    console.log('RUNS BY REGION  queued dispatching running succeeded failed canceled  moves');
    for (const [region, c] of byRegion) {
      const cols = ['queued', 'dispatching', 'running', 'succeeded', 'failed', 'canceled'].map((k, i) =>
        String(c[k] ?? 0).padStart([6, 11, 7, 9, 6, 8][i]),
      );
      console.log(`${region.padEnd(15)} ${cols.join(' ')} ${String(c.moves ?? 0).padStart(6)}`);
    }
  } finally {
    await monitor.close();
  }
}
