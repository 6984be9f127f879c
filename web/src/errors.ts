import { KleinserveConnectionError, KleinserveError, RunFailedError, type FieldError } from '../../sdk/src/index.js';

/** `input.image_urls[1]` -> "Image 2"; other fields get a readable label. */
export function fieldLabel(field: string | undefined): string {
  if (!field) return '';
  const img = /image_urls\[(\d+)\]/.exec(field) ?? /images?\[(\d+)\]/.exec(field);
  if (img) return `Image ${Number(img[1]) + 1}`;
  const name = field.replace(/^(body\.)?input\./, '');
  const labels: Record<string, string> = { prompt: 'Prompt', seed: 'Seed', steps: 'Steps', image_urls: 'Images' };
  return labels[name] ?? name;
}

function fieldOf(e: FieldError): string | undefined {
  if (typeof e.field === 'string') return e.field;
  if (typeof e.path === 'string') return e.path;
  if (Array.isArray((e as any).path)) return (e as any).path.join('.');
  return undefined;
}

/** Rewrites field paths inside a server message so that it names the image a person chose. */
function humanise(text: string): string {
  return text.replace(/(?:input\.)?image_urls\[(\d+)\]/g, (_, i) => `Image ${Number(i) + 1}`).replace(/\binput\./g, '');
}

export interface HumanError { title: string; details: string[] }

export function describeError(err: unknown): HumanError {
  if (err instanceof KleinserveError) {
    if (err.status === 401) return { title: 'The API key was refused. Enter a valid key at the top of the page.', details: [] };
    if (err.status === 429) return { title: 'Too many requests right now. Wait a moment and try again.', details: [] };
    const details = err.errors.map((e) => {
      const label = fieldLabel(fieldOf(e));
      const reason = humanise(String(e.message ?? e.reason ?? e.code ?? 'is not valid'));
      return label && !reason.startsWith(label) ? `${label}: ${reason}` : reason;
    });
    const title = err.code === 'INPUT_VALIDATION_FAILED' ? 'Some inputs need fixing:' : humanise(err.message);
    return { title, details: details.length ? details : err.code === 'INPUT_VALIDATION_FAILED' ? [humanise(err.message)] : [] };
  }
  if (err instanceof RunFailedError) {
    const msg = humanise(err.run.error?.message ?? err.run.failure_message ?? err.code);
    return err.run.status_code === 'canceled'
      ? { title: 'The run was canceled.', details: [] }
      : { title: `The edit failed: ${msg}`, details: [] };
  }
  if (err instanceof KleinserveConnectionError) return { title: 'The server could not be reached. Is kleinserve running?', details: [] };
  return { title: err instanceof Error ? err.message : String(err), details: [] };
}
