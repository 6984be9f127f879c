// The body check itself: where the depth limit falls, which strings it refuses, and that it neither
// recurses (no stack to overflow) nor walks raw upload bytes.
import { describe, expect, it } from 'vitest';
import { checkBody, MAX_BODY_DEPTH } from '../../src/http/body-guard.ts';

const nested = (levels: number): unknown => {
  let v: unknown = 1;
  for (let i = 1; i < levels; i++) v = { a: v };
  return v;
};

describe('checkBody', () => {
  it('accepts exactly MAX_BODY_DEPTH levels and names the first level past it', () => {
    expect(checkBody(nested(MAX_BODY_DEPTH + 1))).toEqual([]); // the innermost level holds a number, not an object
    const errors = checkBody(nested(MAX_BODY_DEPTH + 2));
    expect(errors).toEqual([{ field: Array(MAX_BODY_DEPTH).fill('a').join('.'), reason: `nests deeper than ${MAX_BODY_DEPTH} levels` }]);
  });

  it('walks 100 000 levels without recursion, and arrays count as levels too', () => {
    let deep: unknown = [];
    for (let i = 0; i < 100_000; i++) deep = [deep];
    expect(checkBody({ x: deep })[0].field).toMatch(/^x(\[0\])+$/);
  });

  it('refuses unpaired surrogates in values and keys, and accepts pairs', () => {
    expect(checkBody({ input: { prompt: 'a\ud800b' } })).toEqual([{ field: 'input.prompt', reason: expect.stringMatching(/unpaired UTF-16 surrogate/) }]);
    expect(checkBody({ list: ['ok', '\udc00'] })[0].field).toBe('list[1]');
    expect(checkBody({ metadata: { ['k\ud800']: 1 } })[0]).toMatchObject({ field: 'metadata["k\ufffd"]', reason: expect.stringMatching(/^key /) });
    expect(checkBody({ p: 'a \ud83d\ude00 b' })).toEqual([]);
  });

  it('reports one problem of each kind, with field names of bounded length', () => {
    const longKey = 'k'.repeat(10_000);
    const errors = checkBody({ [longKey]: { a: 'x\ud800' }, deep: nested(100) });
    expect(errors).toHaveLength(2);
    for (const e of errors) expect(e.field.length).toBeLessThanOrEqual(201);
  });

  it('leaves raw bodies (an upload Buffer) alone instead of walking their bytes', () => {
    const bytes = Buffer.alloc(64 * 1024 * 1024);
    const t0 = performance.now();
    expect(checkBody(bytes)).toEqual([]);
    expect(performance.now() - t0).toBeLessThan(50);
  });
});
