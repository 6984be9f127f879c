// The Runflow surface: Runflow's run API, its live events and health, over the run service.
import type { FastifyInstance } from 'fastify';
import type { SurfaceDeps } from '../surface.ts';
import { accountRoutes } from './account.ts';
import { assetRoutes } from './assets.ts';
import { runEventsRoutes } from './events.ts';
import { healthRoutes } from './health.ts';
import { legacyRoutes } from './legacy.ts';
import { runRoutes } from './runs.ts';

export async function runflowSurface(app: FastifyInstance, deps: SurfaceDeps): Promise<void> {
  await app.register(healthRoutes, { engine: deps.engine, storage: deps.storage });
  await app.register(runRoutes, deps);
  await app.register(runEventsRoutes, deps);
  await app.register(accountRoutes);
  await app.register(legacyRoutes, deps);
  await app.register(assetRoutes, deps);
}
