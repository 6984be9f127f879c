import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { expandInputs, globToRegExp, outputPathFor } from '../../src/cli-edit/expand.ts';

describe('CLI input expansion', () => {
  it('matches * within a segment and ** across segments', () => {
    expect(globToRegExp('a/*.png').test('a/x.png')).toBe(true);
    expect(globToRegExp('a/*.png').test('a/b/x.png')).toBe(false);
    expect(globToRegExp('a/**/*.png').test('a/x.png')).toBe(true);
    expect(globToRegExp('a/**/*.png').test('a/b/c/x.png')).toBe(true);
    expect(globToRegExp('a/?.jpg').test('a/xy.jpg')).toBe(false);
  });

  it('expands files, directories and globs to images only, skipping earlier outputs', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-expand-'));
    fs.mkdirSync(path.join(dir, 'sub'));
    for (const f of ['a.jpg', 'a.edited.jpg', 'b.PNG', 'readme.md', 'sub/c.webp', 'sub/d.txt']) fs.writeFileSync(path.join(dir, f), '');
    expect(expandInputs([dir], '.edited').map((f) => path.relative(dir, f))).toEqual(['a.jpg', 'b.PNG']);
    expect(expandInputs([`${dir}/**/*.webp`, path.join(dir, 'a.jpg')], '.edited').map((f) => path.relative(dir, f))).toEqual(['a.jpg', 'sub/c.webp']);
    expect(() => expandInputs([path.join(dir, 'nope.jpg')], '.edited')).toThrow(/no such file/);
    expect(outputPathFor('/x/cat.png', '.edited', 'jpg')).toBe('/x/cat.edited.jpg');
  });
});
