// The callback body of a run, in the format of the surface that made it (the run's callback.format): the
// Runflow envelope by default, or fal's, Replicate's or BFL's webhook body. Serialised once per delivery, so
// every retry sends (and signs) the same bytes.
import { bflWebhookBody } from '../surfaces/bfl/index.ts';
import { falWebhookBody } from '../surfaces/fal/render.ts';
import { replicateWebhookBody } from '../surfaces/replicate/render.ts';
import { callbackEnvelope } from '../surfaces/runflow/run-object.ts';
import type { RunRecord } from '../runs/types.ts';

type Render = (run: RunRecord, baseUrl: string) => { event: string; body: string };

const FORMATS: Record<string, Render> = { fal: falWebhookBody, replicate: replicateWebhookBody, bfl: bflWebhookBody };

export function callbackBody(run: RunRecord, baseUrl: string): { event: string; body: string } {
  return (FORMATS[run.callback?.format ?? ''] ?? callbackEnvelope)(run, baseUrl);
}
