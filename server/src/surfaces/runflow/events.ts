// GET /v1/runs/:id/events — Server-Sent Events for one run: status changes, the engine's real denoise steps
// (n/N with the engine's own step timings), then the terminal run object, after which the stream ends.
// Polling GET /v1/runs/:id stays supported; this is the low-latency path the SDK and playground use.
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { RunEvent } from '../../runs/events.ts';
import type { RunService } from '../../runs/service.ts';
import { isTerminal, type RunRecord } from '../../runs/types.ts';
import { toRunObject } from './run-object.ts';

export interface RunEventsDeps {
  runs: RunService;
  baseUrl: () => string;
  /** Comment line interval that keeps proxies from closing an idle stream. */
  heartbeatMs?: number;
}

function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function statusFrame(run: RunRecord): string {
  return frame('status', { run_id: run.id, status: run.status, at: new Date().toISOString() });
}

export async function runEventsRoutes(app: FastifyInstance, deps: RunEventsDeps): Promise<void> {
  app.get<{ Params: { id: string } }>(
    '/v1/runs/:id/events',
    {
      schema: {
        summary: 'Live events of a run (Server-Sent Events)',
        description:
          'event: status {run_id,status,at} on every status change; event: progress {run_id,step,steps,step_ms,elapsed_ms} ' +
          "per engine denoise step; event: run {the run object} once terminal, then the stream closes.",
        tags: ['runs'],
      },
    },
    async (req, reply) => {
      const following = await deps.runs.follow(req.params.id);
      stream(reply, deps, following);
    },
  );
}

function stream(
  reply: FastifyReply,
  deps: RunEventsDeps,
  following: { run: RunRecord; attach: (fn: (ev: RunEvent) => void) => void; stop: () => void },
) {
  const first = following.run;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': String(reply.request.id),
  });
  let closed = false;
  const heartbeat = setInterval(() => res.write(': ping\n\n'), deps.heartbeatMs ?? 15_000);
  const close = () => {
    if (closed) return;
    closed = true;
    clearInterval(heartbeat);
    following.stop();
    res.end();
  };
  res.on('close', close);

  let lastStatus = first.status;
  const terminal = (run: RunRecord) => {
    res.write(frame('run', toRunObject(run, deps.baseUrl(), deps.runs.cost(run))));
    close();
  };
  const onEvent = (ev: RunEvent) => {
    if (closed) return;
    if (ev.type === 'progress') {
      res.write(frame('progress', { run_id: ev.run_id, step: ev.step, steps: ev.steps, step_ms: ev.step_ms, elapsed_ms: ev.elapsed_ms }));
      return;
    }
    if (ev.run.status !== lastStatus) res.write(statusFrame(ev.run));
    lastStatus = ev.run.status;
    if (isTerminal(ev.run.status)) terminal(ev.run);
  };

  res.write(statusFrame(first));
  if (isTerminal(first.status)) return terminal(first);
  following.attach(onEvent);
}
