// A run that ended without outputs, as the error a surface answers with when its protocol holds the request
// until the end (OpenAI images, Runflow's flat route): the failure code decides the kind.
import { ServiceError } from '../errors.ts';
import type { RunRecord } from './types.ts';

const INPUT_FAILURES = new Set(['INPUT_VALIDATION_FAILED', 'IMAGE_FETCH_FAILED', 'LORA_FETCH_FAILED', 'NSFW_CONTENT']);

/** A late input refusal's message is `<field>: <reason>` (dispatch names the request field first). */
export function failureField(run: RunRecord): { field: string; reason: string } | null {
  const m = /^(input\.[\w.[\]]+): (.+)$/s.exec(run.failure_message ?? '');
  return m ? { field: m[1], reason: m[2] } : null;
}

export function endedWithoutOutput(run: RunRecord): ServiceError {
  if (run.status === 'failed') {
    const kind = INPUT_FAILURES.has(run.failure_code ?? '') ? 'invalid_input' : run.failure_code === 'MODEL_UNAVAILABLE' ? 'unavailable' : 'internal';
    const field = kind === 'invalid_input' ? failureField(run) : null;
    return new ServiceError(kind, run.failure_code ?? 'RUN_FAILED', run.failure_message ?? 'the run failed', field ? [field] : []);
  }
  if (run.status === 'canceled') return new ServiceError('conflict', 'RUN_CANCELED', `run ${run.id} is canceled`);
  return new ServiceError('timeout', 'TIMEOUT', `run ${run.id} is still ${run.status}; read it at /v1/runs/${run.id}`);
}
