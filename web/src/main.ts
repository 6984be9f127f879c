import './style.css';
import { Kleinserve, RunFailedError, toImageUrl, type Run, type RunInput } from '../../sdk/src/index.js';
import { loadHistory, remember, renderHistory } from './history.js';
import { InputList, renderThumbs, wireDropZone } from './inputs.js';
import { shrinkForUpload } from './shrink.js';
import { $, clearResult, showError, showEvent, showRun, showStatus } from './view.js';

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

async function runEdit() {
  if (busy) return;
  showError(null);
  if (inputs.all.length === 0) {
    showError(new Error('Add at least one image: drop it, paste it, or give its URL.'));
    $('drop').focus();
    return;
  }
  busy = true;
  $<HTMLButtonElement>('run').disabled = true;
  clearResult();
  showStatus('Uploading…');
  try {
    const image_urls = await Promise.all(inputs.sources().map(async (s, i) =>
      typeof s === 'string' ? s : toImageUrl(await shrinkForUpload(s), i)));
    const created = await client.runs.create({ input: { ...readForm(), image_urls } });
    refreshHistory(remember(created));
    showStatus('Queued…');
    const run = await client.runs.wait(created.id, { onEvent: showEvent });
    refreshHistory(remember(run));
    showRun(run);
    if (run.status_code !== 'succeeded') showError(new RunFailedError(run));
  } catch (err) {
    showStatus('Not started.');
    showError(err);
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
    showRun(run);
    if (run.status_code === 'failed' || run.status_code === 'canceled') showError(new RunFailedError(run));
    else if (run.status_code !== 'succeeded') void client.runs.wait(id, { onEvent: showEvent }).then(showRun, showError);
  } catch (err) {
    showError(err);
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
  $('reseed').addEventListener('click', () => { $<HTMLInputElement>('seed').value = String(randomSeed()); void runEdit(); });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); void runEdit(); }
  });
  refreshHistory();
}

wire();
