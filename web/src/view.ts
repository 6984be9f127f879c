import type { Run, RunEvent } from '../../sdk/src/index.js';
import { describeError } from './errors.js';

export const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

const TIMING_LABELS: [string, string[]][] = [
  ['Queue', ['queue_ms', 'queue_wait_ms']],
  ['Text', ['text_encode_ms']],
  ['Encode', ['vae_encode_ms']],
  ['Denoise', ['denoise_ms']],
  ['Decode', ['decode_ms']],
  ['Total', ['total_ms']],
];

const STATUS_TEXT: Record<string, string> = {
  queued: 'Queued…', dispatching: 'Starting…', running: 'Running…',
  succeeded: 'Done.', failed: 'Failed.', canceled: 'Canceled.',
};

export function showStatus(text: string, step?: { step: number; steps: number }) {
  $('status-text').textContent = text;
  const bar = $<HTMLProgressElement>('progress');
  bar.hidden = !step;
  if (step) { bar.max = step.steps; bar.value = step.step; }
}

export function showEvent(ev: RunEvent) {
  if (ev.type === 'status') showStatus(STATUS_TEXT[ev.status] ?? ev.status);
  else if (ev.type === 'progress') showStatus(`Step ${ev.step}/${ev.steps} · ${Math.round(ev.elapsed_ms)} ms`, ev);
}

/**
 * On a phone the result panel sits below the inputs: bring it up when a run starts (so its progress shows) and when
 * the result arrives, unless what matters is already on screen (on a desktop it is, so nothing moves).
 */
export function revealResult(what: 'status' | 'result') {
  const box = $(what).getBoundingClientRect();
  const onScreen = what === 'status' ? box.top >= 0 && box.bottom <= window.innerHeight : box.top >= 0 && box.top < window.innerHeight;
  if (onScreen) return;
  const reduce = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
  $('result-panel').scrollIntoView({ behavior: reduce ? 'auto' : 'smooth', block: 'start' });
}

export function showError(err: unknown) {
  const box = $('error');
  if (err === null) { box.hidden = true; box.replaceChildren(); return; }
  const { title, details } = describeError(err);
  const p = document.createElement('p');
  p.style.margin = '0';
  p.textContent = title;
  box.replaceChildren(p);
  if (details.length) {
    const ul = document.createElement('ul');
    ul.append(...details.map((d) => Object.assign(document.createElement('li'), { textContent: d })));
    box.append(ul);
  }
  box.hidden = false;
}

export function clearResult() {
  $('result').replaceChildren();
  $('run-meta').hidden = true;
  $('timings').hidden = true;
  $('download').hidden = true;
  $('reseed').hidden = true;
}

/** A failure replaces whatever the last run left (its image, "Done.", download and re-run), so the two never mix. */
export function showFailure(err: unknown, status = 'Not started.') {
  clearResult();
  showStatus(status);
  showError(err);
}

/** The seed the re-run button will use, shown on the button itself before anyone clicks it. */
export function offerReseed(seed: number) {
  $('reseed-seed').textContent = String(seed);
  $('reseed').dataset.seed = String(seed);
  $('reseed').hidden = false;
}

export function showRun(run: Run) {
  clearResult();
  showStatus(STATUS_TEXT[run.status_code] ?? run.status_code);
  const outputs = run.output?.outputs ?? [];
  $('result').replaceChildren(...outputs.map((o, i) => {
    const img = document.createElement('img');
    img.src = o.url;
    img.alt = `Result ${i + 1} of “${String(run.input?.prompt ?? '')}”, ${o.width}×${o.height}`;
    img.width = o.width;
    img.height = o.height;
    return img;
  }));
  const timing = run.output?.timing ?? {};
  const cells = TIMING_LABELS.flatMap(([label, keys]) => {
    const key = keys.find((k) => typeof timing[k] === 'number');
    if (!key) return [];
    const div = document.createElement('div');
    div.dataset.timing = key;
    div.append(
      Object.assign(document.createElement('dt'), { textContent: label }),
      Object.assign(document.createElement('dd'), { textContent: `${(timing[key] as number).toFixed(0)} ms` }),
    );
    return [div];
  });
  const dl = $('timings');
  dl.replaceChildren(...cells);
  dl.hidden = cells.length === 0;
  if (outputs[0]) {
    const a = $<HTMLAnchorElement>('download');
    a.href = outputs[0].url;
    a.download = `kleinserve-${run.id}.${outputs[0].content_type.split('/')[1] ?? 'jpg'}`;
    a.hidden = false;
  }
  const meta = $('run-meta');
  const inputs = Array.isArray(run.input?.image_urls) ? (run.input.image_urls as string[]) : [];
  meta.textContent = `Run ${run.id} · ${inputs.length} input image${inputs.length === 1 ? '' : 's'}` +
    (run.output ? ` · seed ${run.output.seed}` : '') + (run.duration_ms !== null ? ` · ${run.duration_ms} ms` : '');
  meta.hidden = false;
}
