// Drives the playground in Debian's chromium (playwright-core) against the REAL server + tiny engine:
// upload two images, run an edit, see the result and its timings; a refusal names the image at fault;
// a run reopens from history after a reload. Screenshots at desktop and phone widths go to
// $KLEINSERVE_SCREENSHOT_DIR (docs/screenshots when refreshing the README's images), else a temp dir.
import fs from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
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

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  imageHost?.close();
});

describe('playground', () => {
  it('runs an edit on two uploaded images and shows the result with its timings', async () => {
    await page.goto(server.url);
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
    await page.locator('#prompt').focus();
    await page.keyboard.press('Control+Enter');

    const result = page.locator('#result img');
    await result.first().waitFor({ state: 'visible', timeout: 60_000 });
    await expect.poll(() => result.first().evaluate((img: HTMLImageElement) => img.complete && img.naturalWidth > 0)).toBe(true);
    clearInterval(watch);
    await expect.poll(() => page.locator('#status-text').textContent()).toBe('Done.');
    const timings = await page.locator('#timings').innerText();
    for (const label of ['Queue', 'Text', 'Encode', 'Denoise', 'Decode']) expect(timings).toContain(label);
    expect(await page.locator('#download').getAttribute('href')).toMatch(/\/v1\/outputs\//);
    expect(await page.locator('#error').isHidden()).toBe(true);
    expect([...seen].some((t) => t.startsWith('Step ') || t === 'Queued…' || t === 'Running…')).toBe(true);
    await page.screenshot({ path: path.join(SHOTS, 'playground-desktop.png') });
  });

  it('re-does the run with a new seed', async () => {
    const before = await page.locator('#run-meta').innerText();
    await page.locator('#reseed').click();
    await expect.poll(() => page.locator('#run-meta').innerText(), { timeout: 60_000 }).not.toBe(before);
    await expect.poll(() => page.locator('#status-text').textContent(), { timeout: 60_000 }).toBe('Done.');
    const seed = await page.locator('#seed').inputValue();
    expect(seed).not.toBe('1234');
    expect(await page.locator('#run-meta').innerText()).toContain(`seed ${seed}`);
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

  it('shows a refusal in words, naming the image at fault', async () => {
    await page.locator('#files').setInputFiles(files[2]);
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(3);
    await page.locator('#run').click();
    const error = page.locator('#error');
    await error.waitFor({ state: 'visible' });
    const text = await error.innerText();
    expect(text).toContain('Image 3');
    expect(text).toMatch(/small|least|64/i);
    await page.locator('#thumbs li').nth(2).getByRole('button').click();
    await expect.poll(() => page.locator('#thumbs img').count()).toBe(2);
  });

  it('takes a dropped image and shrinks big photos to the engine pixel cap before upload', async () => {
    while (await page.locator("#thumbs li button").count()) await page.locator("#thumbs li button").first().click();
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
    await expect.poll(() => entries.count()).toBe(3);
    expect(await page.locator('#result img').count()).toBe(0);
    // The oldest entry is the first run (newest first).
    await entries.last().focus();
    await page.keyboard.press('Enter');
    await page.locator('#result img').first().waitFor({ state: 'visible' });
    expect(await page.locator('#prompt').inputValue()).toBe('turn both into a watercolor postcard');
    expect(await page.locator('#seed').inputValue()).toBe('1234');
    expect(await page.locator('#timings').innerText()).toContain('Denoise');

    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: path.join(SHOTS, 'playground-phone.png'), fullPage: true });
  });
});
