// fal's sync_mode: the answer itself carries each output as a data URI, for callers that never fetch URLs.
import type { RunObject } from '../runs/run-object.ts';
import type { RunRecord } from '../runs/types.ts';
import type { ObjectStore } from '../storage/object-store.ts';

export async function inlineOutputs(obj: RunObject, run: RunRecord, objects: ObjectStore): Promise<RunObject> {
  if (!obj.output || !run.output) return obj;
  const bytes = await Promise.all(run.output.images.map((img) => objects.get(img.key)));
  const outputs = obj.output.outputs.map((o, i) => ({ ...o, url: `data:${o.content_type};base64,${bytes[i].toString('base64')}` }));
  return { ...obj, output: { ...obj.output, outputs } };
}
