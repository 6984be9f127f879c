import type { Run } from '../../sdk/src/index.js';

/** What the page remembers of a run between reloads; the run itself is re-read from the API on reopen. */
export interface HistoryEntry { id: string; prompt: string; seed?: number; status: string; thumb?: string; at: string }

const KEY = 'kleinserve.history';
const LIMIT = 30;

export function loadHistory(): HistoryEntry[] {
  try { return JSON.parse(localStorage.getItem(KEY) ?? '[]'); } catch { return []; }
}

export function remember(run: Run): HistoryEntry[] {
  const entry: HistoryEntry = {
    id: run.id,
    prompt: String(run.input?.prompt ?? ''),
    seed: run.output?.seed ?? (run.input?.seed as number | undefined),
    status: run.status_code,
    thumb: run.output?.outputs?.[0]?.url,
    at: run.created_at,
  };
  const list = [entry, ...loadHistory().filter((e) => e.id !== run.id)].slice(0, LIMIT);
  localStorage.setItem(KEY, JSON.stringify(list));
  return list;
}

/**
 * The live state of a run in progress ("running · step 2/4"), so the history never says "queued" for a run
 * the engine is working on. Terminal states come from remember(run).
 */
export function updateProgress(id: string, status: string): HistoryEntry[] {
  const list = loadHistory();
  const entry = list.find((e) => e.id === id);
  if (!entry || entry.status === status) return list;
  entry.status = status;
  localStorage.setItem(KEY, JSON.stringify(list));
  return list;
}

export function renderHistory(list: HTMLOListElement, empty: HTMLElement, entries: HistoryEntry[], onOpen: (id: string) => void) {
  empty.hidden = entries.length > 0;
  list.replaceChildren(...entries.map((e) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.runId = e.id;
    if (e.thumb) {
      const img = document.createElement('img');
      img.src = e.thumb;
      img.alt = '';
      b.append(img);
    }
    const text = document.createElement('span');
    text.textContent = e.prompt || '(no prompt)';
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = `${e.status}${e.seed !== undefined ? ` · seed ${e.seed}` : ''} · ${new Date(e.at).toLocaleTimeString()}`;
    text.append(meta);
    b.append(text);
    b.setAttribute('aria-label', `Reopen run: ${e.prompt} (${e.status})`);
    b.addEventListener('click', () => onOpen(e.id));
    li.append(b);
    return li;
  }));
}
