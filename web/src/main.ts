import './style.css';
import { Kleinserve, RunFailedError, toImageUrl, type Run, type RunEvent, type RunInput } from '../../sdk/src/index.js';
import { loadHistory, remember, renderHistory, updateProgress } from './history.js';
import { InputList, renderThumbs, wireDropZone } from './inputs.js';
import { shrinkForUpload } from './shrink.js';
import { $, clearResult, offerReseed, revealResult, showError, showEvent, showFailure, showRun, showStatus } from './view.js';

const KEY_STORE = 'kleinserve.apiKey';
let client = makeClient();
let busy = false;

function makeClient() {
  return new Kleinserve({ baseUrl: location.origin, apiKey: localStorage.getItem(KEY_STORE) ?? undefined, maxRetries: 3 });
}

const inputs = new InputList((items) => renderThumbs($('thumbs'), items, (id) => inputs.remove(id)));

function refreshHistory(entries = loadHistory()) {
  renderHistory($('history'), $('history-empty'), entries, (id) => void reopen(id));
}

function randomSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

function readForm(): RunInput {
  const seed = $<HTMLInputElement>('seed').value.trim();
  const steps = $<HTMLInputElement>('steps').value.trim();
  return {
    prompt: $<HTMLTextAreaElement>('prompt').value,
    ...(seed !== '' ? { seed: Number(seed) } : {}),
    ...(steps !== '' ? { steps: Number(steps) } : {}),
  };
}

/** A run's live state goes to the status line and to its history entry. */
function follow(id: string) {
  return (ev: RunEvent) => {
    showEvent(ev);
    if (ev.type === 'status') refreshHistory(updateProgress(id, ev.status));
    else if (ev.type === 'progress') refreshHistory(updateProgress(id, `running · step ${ev.step}/${ev.steps}`));
  };
}

/** Shows a run as it stands; a finished one offers a re-run with a new seed that is visible before the click. */
function present(run: Run) {
  showRun(run);
  if (run.status_code === 'succeeded') offerReseed(randomSeed());
  else if (run.status_code === 'failed' || run.status_code === 'canceled') showError(new RunFailedError(run));
}

async function runEdit() {
  if (busy) return;
  showError(null);
  if (inputs.all.length === 0) {
    showFailure(new Error('Add at least one image: drop it, paste it, or give its URL.'));
    $('drop').focus();
    return;
  }
  busy = true;
  $<HTMLButtonElement>('run').disabled = true;
  clearResult();
  showStatus('Uploading…');
  revealResult('status');
  try {
    const image_urls = await Promise.all(inputs.sources().map(async (s, i) =>
      typeof s === 'string' ? s : toImageUrl(await shrinkForUpload(s), i)));
    const created = await client.runs.create({ input: { ...readForm(), image_urls } });
    refreshHistory(remember(created));
    showStatus('Queued…');
    const run = await client.runs.wait(created.id, { onEvent: follow(created.id) });
    refreshHistory(remember(run));
    present(run);
    revealResult('result');
  } catch (err) {
    showFailure(err);
  } finally {
    busy = false;
    $<HTMLButtonElement>('run').disabled = false;
  }
}

async function reopen(id: string) {
  showError(null);
  try {
    const run: Run = await client.runs.get(id);
    const input = run.input ?? {};
    $<HTMLTextAreaElement>('prompt').value = String(input.prompt ?? '');
    $<HTMLInputElement>('seed').value = String(run.output?.seed ?? input.seed ?? '');
    $<HTMLInputElement>('steps').value = String(input.steps ?? 4);
    const urls = Array.isArray(input.image_urls) ? input.image_urls.filter((u): u is string => typeof u === 'string' && /^https?:/.test(u)) : [];
    if (urls.length) { for (const i of [...inputs.all]) inputs.remove(i.id); urls.forEach((u) => inputs.addUrl(u)); }
    present(run);
    if (run.status_code !== 'succeeded' && run.status_code !== 'failed' && run.status_code !== 'canceled') {
      void client.runs.wait(id, { onEvent: follow(id) }).then((done) => { refreshHistory(remember(done)); present(done); }, showFailure);
    }
    revealResult('result');
  } catch (err) {
    showFailure(err);
  }
}

function wire() {
  const keyInput = $<HTMLInputElement>('api-key');
  keyInput.value = localStorage.getItem(KEY_STORE) ?? '';
  $('key-state').textContent = keyInput.value ? 'saved' : 'not set';
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    localStorage.setItem(KEY_STORE, keyInput.value.trim());
    client = makeClient();
    $('key-state').textContent = 'saved';
  });

  wireDropZone($('drop'), $<HTMLInputElement>('files'), (files) => {
    const dropped = inputs.addFiles(files);
    if (dropped) showError(new Error(`Only 4 images can be used; ${dropped} left out.`));
  });
  $('url-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const url = $<HTMLInputElement>('url');
    if (!/^https?:\/\//.test(url.value.trim())) { showError(new Error('Image URL: give an http(s) address.')); return; }
    if (!inputs.addUrl(url.value.trim())) showError(new Error('Only 4 images can be used.'));
    url.value = '';
  });
  $('dice').addEventListener('click', () => { $<HTMLInputElement>('seed').value = String(randomSeed()); });
  $('run-form').addEventListener('submit', (e) => { e.preventDefault(); void runEdit(); });
  // The seed is the one the button shows; it goes into the seed field so the form says what runs.
  $('reseed').addEventListener('click', () => { $<HTMLInputElement>('seed').value = $('reseed').dataset.seed ?? ''; void runEdit(); });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); void runEdit(); }
  });
  refreshHistory();
}

wire();
