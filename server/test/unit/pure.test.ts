// Pure helpers: Prefer parsing, error field paths, callback signing/backoff, API keys.
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashKey, KeyRing, loadKeys } from '../../src/auth/keys.ts';
import { backoffMs, sign } from '../../src/callbacks/delivery.ts';
import { loadConfig } from '../../src/config.ts';
import { fieldPath, zodIssuesToFieldErrors } from '../../src/plugins/errors.ts';
import { parsePreferWait } from '../../src/runs/wait.ts';

describe('Prefer: wait', () => {
  it.each([
    [undefined, null],
    ['respond-async', null],
    ['wait', 60],
    ['wait=5', 5],
    ['WAIT = 7', 7],
    ['wait=600', 60],
    ['return=minimal, wait=3', 3],
    ['handling=lenient; wait=2', 2],
    ['wait="4"', 4],
    [['foo', 'wait=9'], 9],
  ])('%j -> %j', (header, expected) => {
    expect(parsePreferWait(header as string | string[] | undefined, 60)).toBe(expected);
  });
});

describe('error field paths', () => {
  it('renders JSON pointers the way clients name fields', () => {
    expect(fieldPath(['', 'input', 'image_urls', '2'])).toBe('input.image_urls[2]');
    expect(fieldPath([''], 'query')).toBe('query');
    expect(fieldPath(['', 'status'], 'query')).toBe('query.status');
  });

  it('names each unknown key separately', () => {
    const errs = zodIssuesToFieldErrors(
      [
        { instancePath: '/input', keyword: 'unrecognized_keys', message: 'x', params: { keys: ['foo', 'bar'] } },
        { instancePath: '/input/steps', keyword: 'too_big', message: 'Too big: expected number to be <=50', params: {} },
      ],
      'body',
    );
    expect(errs).toEqual([
      { field: 'input.foo', reason: 'unknown field' },
      { field: 'input.bar', reason: 'unknown field' },
      { field: 'input.steps', reason: 'Too big: expected number to be <=50' },
    ]);
  });
});

describe('callbacks', () => {
  it('signs the raw body with HMAC-SHA256 hex', () => {
    expect(sign('s', '{"a":1}')).toBe(createHmac('sha256', 's').update('{"a":1}').digest('hex'));
  });

  it('backs off exponentially with bounded jitter and a cap', () => {
    for (let n = 1; n <= 6; n++) {
      const d = backoffMs(1000, n);
      expect(d).toBeGreaterThanOrEqual(0.8 * 1000 * 2 ** (n - 1));
      expect(d).toBeLessThanOrEqual(1.2 * 1000 * 2 ** (n - 1));
    }
    expect(backoffMs(1000, 40)).toBeLessThanOrEqual(1.2 * 3_600_000);
  });
});

describe('API keys', () => {
  it('checks presented keys against hashes only', () => {
    const ring = new KeyRing([hashKey('abc_1')]);
    expect(ring.check('abc_1')).toBe(true);
    expect(ring.check('abc_2')).toBe(false);
    expect(ring.check(undefined)).toBe(false);
  });

  it('generates one key on first start, stores its hash, and never shows it again', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-keys-'));
    const first = loadKeys([], dir);
    expect(first.generated).toMatch(/^ks_live_[A-Za-z0-9]{32}$/);
    expect(fs.readFileSync(path.join(dir, 'api-keys.json'), 'utf8')).not.toContain(first.generated!);
    const second = loadKeys([], dir);
    expect(second.generated).toBeNull();
    expect(second.ring.check(first.generated!)).toBe(true);
    expect(loadKeys(['mine_1'], dir).ring.check(first.generated!)).toBe(false);
  });

  it('refuses configured keys the Runflow SDK would reject', () => {
    expect(() => loadConfig({ data: '/tmp/x', 'api-key': ['has-dash'] }, {})).toThrow(/api.*\^\[A-Za-z0-9_\]\+\$/i);
    expect(loadConfig({ data: '/tmp/x' }, { KLEINSERVE_API_KEYS: 'a_1, b_2' }).apiKeys).toEqual(['a_1', 'b_2']);
    expect(loadConfig({ data: '/tmp/x' }, {}).host).toBe('127.0.0.1');
  });
});
