// What every API surface gets: the run service, the engine's status, and the public base URL. A surface is
// a Fastify plugin that parses its wire format into the canonical request, calls the service and renders
// the service's run in its own wire format; it never touches stores, queues or the engine directly.
import type { EngineStatusView } from '../engine/engine.ts';
import type { RunService } from '../runs/service.ts';
import type { StorageHealth } from '../storage/health.ts';

export interface SurfaceDeps {
  runs: RunService;
  engine: EngineStatusView;
  /** This server's public base URL, for links and output URLs in answers. */
  baseUrl: () => string;
  /** Whether storage takes writes (health reports it). */
  storage?: Pick<StorageHealth, 'snapshot'>;
}
