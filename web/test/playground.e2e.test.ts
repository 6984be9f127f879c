// Drives the playground in Debian's chromium (playwright-core) against the REAL server + tiny engine, and asserts
// what a person sees: nothing that needs a run shows before one; upload two images, run an edit, see the result
// at the image's own aspect ratio with its timings while the history follows the run's real state; re-run with a
// seed shown before the click; a refusal names the image at fault and replaces the previous result; a run reopens
// from history after a reload; on a phone the page scrolls to the progress and the result. Screenshots at desktop
// and phone widths go to $KLEINSERVE_SCREENSHOT_DIR (docs/screenshots when refreshing the README's images), else a
// temp dir.
import fs from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import sharp from 'sharp';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type ServerHandle } from '../../server/test/helpers/server.ts';
import { testImage } from '../../server/test/helpers/images.ts';

const KEY = 'ks_test_playground';
const WEB = path.resolve(import.meta.dirname, '..');
const SHOTS = process.env.KLEINSERVE_SCREENSHOT_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'ks-shots-'));
let server: ServerHandle;
let browser: Browser;
let page: Page;
let files: string[];
let imageHost: Server;
let imageUrl: string;

beforeAll(async () => {
  await build({ root: WEB, logLevel: 'silent' });
  // A local image host the server may fetch from (the allow-list opens loopback for this test only).
  const hosted = await testImage(128, 128);
  imageHost = createServer((_req, res) => res.writeHead(200, { 'content-type': 'image/jpeg' }).end(hosted));
  await new Promise<void>((r) => imageHost.listen(0, '127.0.0.1', r));
  imageUrl = `http://127.0.0.1:${(imageHost.address() as AddressInfo).port}/hosted.jpg`;
  server = await startServer({ apiKeys: [KEY], env: { KLEINSERVE_FETCH_ALLOWLIST: '127.0.0.1' } });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-pg-'));
  const make = async (name: string, w: number, h: number, fmt: 'png' | 'jpeg') => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, await testImage(w, h, fmt));
    return p;
  };
  files = [await make('portrait.jpg', 192, 256, 'jpeg'), await make('logo.png', 160, 160, 'png'), await make('speck.png', 8, 8, 'png'),
    await make('big.jpg', 1600, 1200, 'jpeg')];
  fs.mkdirSync(SHOTS, { recursive: true });
});

/** Width/height of the image as drawn on screen, against the image file's own. */
async function aspect(img: Locator) {
  return img.evaluate((el: HTMLImageElement) => {
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    const borderX = parseFloat(style.borderLeftWidth) + parseFloat(style.borderRightWidth);
    const borderY = parseFloat(style.borderTopWidth) + parseFloat(style.borderBottomWidth);
    return { shown: (box.width - borderX) / (box.height - borderY), natural: el.naturalWidth / el.naturalHeight, width: box.width };
  });
}

/** Whether the element lies entirely inside the viewport as the page is scrolled now. */
const inView = (sel: string) => page.locator(sel).evaluate((el) => {
  const box = el.getBoundingClientRect();
  return box.top >= 0 && box.bottom <= window.innerHeight;
});

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  imageHost?.close();
});

describe('playground', () => {
  it('shows no download, re-run or run details before any run', async () => {
    await page.goto(server.url);
    expect(await page.locator('#status-text').textContent()).toBe('Ready.');
    for (const id of ['#download', '#reseed', '#run-meta', '#timings', '#error', '#progress']) {
      expect(await page.locator(id).isVisible(), id).toBe(false);
    }
  });

  it('runs an edit on two uploaded images and shows the result at its own aspect ratio, with timings and live history', async () => {
    // Keyboard only: the key is typed and saved with Enter, the run starts with Ctrl+Enter.
    await page.locator('#api-key').focus();
    await page.keyboard.type(KEY);
    await page.keyboard.press('Enter');
    await expect.poll(() => page.evaluate(() => localStorage.getItem('kleinserve.apiKey'))).toBe(KEY);

    await page.locator('#files').setInputFiles(files.slice(0, 2));
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(2);
    await page.locator('#prompt').fill('turn both into a watercolor postcard');
    await page.locator('#seed').fill('1234');
    await page.locator('#steps').fill('3');
    const seen = new Set<string>();
    const watch = setInterval(() => void page.locator('#status-text').textContent().then((t) => t && seen.add(t)).catch(() => {}), 20);
    // Every state the history shows for the run, recorded in the page as it changes.
    await page.evaluate(() => {
      const w = window as unknown as { historyStates: string[] };
      w.historyStates = [];
      new MutationObserver(() => {
        const meta = document.querySelector('#history li .meta');
        if (meta?.textContent) w.historyStates.push(meta.textContent);
      }).observe(document.getElementById('history')!, { childList: true, subtree: true, characterData: true });
    });
    await page.locator('#prompt').focus();
    await page.keyboard.press('Control+Enter');

    const result = page.locator('#result img');
    await result.first().waitFor({ state: 'visible', timeout: 60_000 });
    await expect.poll(() => result.first().evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth > 0)).toBe(true);
    clearInterval(watch);
    await expect.poll(() => page.locator('#status-text').textContent()).toBe('Done.');
    // The output takes the first reference's shape (192x256, portrait); it must be drawn that way.
    const { shown, natural, width } = await aspect(result.first());
    expect(natural).toBeCloseTo(192 / 256, 2);
    expect(Math.abs(shown - natural) / natural).toBeLessThan(0.01);
    expect(width).toBeGreaterThan(150);
    // On a desktop everything is on screen already: the page must not jump.
    expect(await page.evaluate(() => window.scrollY)).toBe(0);
    const timings = await page.locator('#timings').innerText();
    for (const label of ['Queue', 'Text', 'Encode', 'Denoise', 'Decode']) expect(timings).toContain(label);
    expect(await page.locator('#download').getAttribute('href')).toMatch(/\/v1\/outputs\//);
    expect(await page.locator('#download').isVisible()).toBe(true);
    expect(await page.locator('#error').isHidden()).toBe(true);
    expect([...seen].some((t) => t.startsWith('Step ') || t === 'Queued…' || t === 'Running…')).toBe(true);
    const states = await page.evaluate(() => (window as unknown as { historyStates: string[] }).historyStates);
    expect(states.some((t) => /^running · step [1-3]\/3/.test(t)), states.join(' | ')).toBe(true);
    expect(states.at(-1)).toMatch(/^succeeded · seed 1234/);
    await page.screenshot({ path: path.join(SHOTS, 'playground-desktop.png'), fullPage: true });
  });

  it('re-runs with a new seed that the button shows before the click', async () => {
    const offered = (await page.locator('#reseed-seed').textContent())!;
    expect(offered).toMatch(/^\d+$/);
    expect(offered).not.toBe('1234');
    expect(await page.locator('#reseed').innerText()).toBe(`Re-run with seed ${offered}`);
    const before = await page.locator('#run-meta').innerText();
    await page.locator('#reseed').click();
    expect(await page.locator('#seed').inputValue()).toBe(offered);
    await expect.poll(() => page.locator('#run-meta').innerText(), { timeout: 60_000 }).not.toBe(before);
    await expect.poll(() => page.locator('#status-text').textContent(), { timeout: 60_000 }).toBe('Done.');
    expect(await page.locator('#run-meta').innerText()).toContain(`seed ${offered}`);
    expect(await page.locator('#reseed-seed').textContent()).not.toBe(offered);
    expect(await page.locator('#history button').count()).toBe(2);  // before the URL run
  });

  it('edits an image given by URL', async () => {
    await page.locator('#url').fill(imageUrl);
    await page.locator('#url').press('Enter');
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(3);
    await page.locator('#run').click();
    await expect.poll(() => page.locator('#run-meta').innerText(), { timeout: 60_000 }).toContain('3 input images');
    await expect.poll(() => page.locator('#status-text').textContent(), { timeout: 60_000 }).toBe('Done.');
    await page.locator('#thumbs li').nth(2).getByRole('button').click();
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(2);
  });

  it('shows a refusal in words, naming the image at fault, in place of the previous result', async () => {
    expect(await page.locator('#status-text').textContent()).toBe('Done.');
    expect(await page.locator('#result img').count()).toBe(1);
    await page.locator('#files').setInputFiles(files[2]);
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(3);
    await page.locator('#run').click();
    const error = page.locator('#error');
    await error.waitFor({ state: 'visible' });
    const text = await error.innerText();
    expect(text).toContain('Image 3');
    expect(text).toMatch(/small|least|64/i);
    // Nothing of the previous run stays beside the error.
    expect(await page.locator('#result img').count()).toBe(0);
    expect(await page.locator('#status-text').textContent()).not.toBe('Done.');
    for (const id of ['#download', '#reseed', '#timings']) expect(await page.locator(id).isVisible(), id).toBe(false);
    await page.locator('#thumbs li').nth(2).getByRole('button').click();
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(2);
  });

  it('replaces the previous result when a run cannot start', async () => {
    await page.locator('#run').click();
    await expect.poll(() => page.locator('#status-text').textContent(), { timeout: 60_000 }).toBe('Done.');
    while (await page.locator('#thumbs li button').count()) await page.locator('#thumbs li button').first().click();
    await page.locator('#run').click();
    await expect.poll(() => page.locator('#error').innerText()).toContain('Add at least one image');
    expect(await page.locator('#result img').count()).toBe(0);
    expect(await page.locator('#status-text').textContent()).toBe('Not started.');
    expect(await page.locator('#download').isVisible()).toBe(false);
  });

  it('takes a dropped image and shrinks big photos to the engine pixel cap before upload', async () => {
    expect(await page.locator('#thumbs img').count()).toBe(0);
    // A real drop event carrying the file, as a person dragging from the desktop would send it.
    const big = fs.readFileSync(files[3]).toString('base64');
    await page.locator('#drop').evaluate((zone, b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'big.jpg', { type: 'image/jpeg' }));
      zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, big);
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(1);
    let sent: any = null;
    await page.route('**/edit/runs', async (route) => {
      sent = route.request().postDataJSON();
      await route.abort();
    });
    await page.locator('#run').click();
    await page.locator('#error').waitFor({ state: 'visible' });
    await page.unroute('**/edit/runs');
    const uri: string = sent.input.image_urls[0];
    expect(uri).toMatch(/^data:image\/jpeg;base64,/);
    const meta = await sharp(Buffer.from(uri.split(',')[1], 'base64')).metadata();
    expect(meta.width! * meta.height!).toBeLessThanOrEqual(1_048_576);
    expect(meta.width! / meta.height!).toBeCloseTo(1600 / 1200, 1);
    expect(await page.locator('#error').innerText()).toMatch(/could not be reached/);
  });

  it('reopens a run from the history after a reload', async () => {
    await page.reload();
    const entries = page.locator('#history button');
    await expect.poll(() => entries.count()).toBe(4);  // first, re-run, URL, and the one a failed start replaced
    expect(await page.locator('#result img').count()).toBe(0);
    // The oldest entry is the first run (newest first).
    await entries.last().focus();
    await page.keyboard.press('Enter');
    await page.locator('#result img').first().waitFor({ state: 'visible' });
    expect(await page.locator('#prompt').inputValue()).toBe('turn both into a watercolor postcard');
    expect(await page.locator('#seed').inputValue()).toBe('1234');
    expect(await page.locator('#timings').innerText()).toContain('Denoise');
    // Its two inline inputs come back as the server's stored-input URLs, so the run can be submitted again.
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(2);
    await page.locator('#run').click();
    await expect.poll(() => page.locator('#status-text').textContent(), { timeout: 60_000 }).toMatch(/^(Done|Failed|Not started)\.$/);
    expect(await page.locator('#status-text').textContent(), await page.locator('#error').innerText()).toBe('Done.');
  });

  it('on a phone, scrolls to the progress and then to the result, drawn at its own aspect ratio', async () => {
    await page.setViewportSize({ width: 375, height: 667 });
    while (await page.locator('#thumbs li button').count()) await page.locator('#thumbs li button').first().click();
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.locator('#files').setInputFiles(files[0]);
    await page.locator('#steps').fill('6');
    await page.locator('#prompt').focus();
    // The result panel starts below the fold on a phone; a run must bring it up.
    expect(await inView('#status')).toBe(false);
    await page.keyboard.press('Control+Enter');
    await expect.poll(() => inView('#status'), { timeout: 10_000 }).toBe(true);
    await expect.poll(() => page.locator('#status-text').textContent(), { timeout: 60_000 }).toMatch(/^(Done|Failed|Not started)\.$/);
    expect(await page.locator('#status-text').textContent(), await page.locator('#error').innerText()).toBe('Done.');
    const img = page.locator('#result img').first();
    await expect.poll(() => img.evaluate((el: HTMLImageElement) => el.complete && el.naturalWidth > 0)).toBe(true);
    await expect.poll(() => img.evaluate((el) => el.getBoundingClientRect().top >= 0 && el.getBoundingClientRect().top < window.innerHeight)).toBe(true);
    const { shown, natural } = await aspect(img);
    expect(Math.abs(shown - natural) / natural).toBeLessThan(0.01);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(SHOTS, 'playground-phone.png'), fullPage: true });
  });
});
