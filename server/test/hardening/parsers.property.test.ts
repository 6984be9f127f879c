// Property-based checks (fast-check) for the input parsers beyond data URIs and base64
// (those live in test/images): the Prefer header, and image_size / aspect_ratio sizing rules.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { EditInputSchema } from '../../src/surfaces/runflow/schemas.ts';
import { resolveAliases } from '../../src/surfaces/runflow/input-aliases.ts';
import { IMAGE_SIZE_PRESETS, sizeForAspect } from '../../src/runs/sizes.ts';
import { parsePreferWait } from '../../src/runs/wait.ts';

const MAX_OUTPUT_PIXELS = 4_194_304;
const MAX_ASPECT = 8; // beyond this the 64 px minimum side keeps sizes from following the ratio
const otherPref = fc.constantFrom('respond-async', 'handling=strict', 'handling=lenient', 'return=minimal', 'return=representation');

describe('Prefer: wait', () => {
  it('never throws and always answers null or a wait within [0, cap]', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 })), fc.integer({ min: 0, max: 600 }), (header, cap) => {
        const w = parsePreferWait(header, cap);
        return w === null || (Number.isFinite(w) && w >= 0 && w <= cap);
      }),
    );
  });

  it('wait=N among other preferences, any order and spacing, waits min(N, cap)', () => {
    fc.assert(
      fc.property(
        fc.nat({ max: 10_000_000 }),
        fc.integer({ min: 1, max: 600 }),
        fc.array(otherPref, { maxLength: 3 }),
        fc.nat(),
        fc.constantFrom('', ' ', '  '),
        fc.boolean(),
        (n, cap, others, at, sp, quoted) => {
          const prefs: string[] = [...others];
          prefs.splice(at % (others.length + 1), 0, `wait${sp}=${sp}${quoted ? `"${n}"` : n}`);
          return parsePreferWait(prefs.join(`,${sp}`), cap) === Math.min(n, cap);
        },
      ),
    );
  });

  it('bare wait means the cap; no wait preference means no wait', () => {
    fc.assert(
      fc.property(fc.array(otherPref, { maxLength: 3 }), fc.integer({ min: 1, max: 600 }), (others, cap) => {
        expect(parsePreferWait([...others, 'WAIT'].join(', '), cap)).toBe(cap);
        expect(parsePreferWait(others.join(', ') || undefined, cap)).toBeNull();
      }),
    );
  });
});

describe('aspect_ratio and image_size', () => {
  const ratio = fc.tuple(fc.integer({ min: 1, max: 99 }), fc.integer({ min: 1, max: 99 }));
  const megapixels = fc.double({ min: 0.0625, max: 4, noNaN: true });

  it('sizes from W:H are multiples of 16, at least 64, within the output pixel cap and close to the ratio', () => {
    fc.assert(
      fc.property(ratio.filter(([w, h]) => Math.max(w / h, h / w) <= MAX_ASPECT), megapixels, ([w, h], mp) => {
        const s = sizeForAspect(`${w}:${h}`, mp);
        expect(s.width % 16).toBe(0);
        expect(s.height % 16).toBe(0);
        expect(Math.min(s.width, s.height)).toBeGreaterThanOrEqual(64);
        expect(s.width * s.height).toBeLessThanOrEqual(MAX_OUTPUT_PIXELS);
        expect(Math.abs(s.width / s.height / (w / h) - 1)).toBeLessThan(0.12);
      }),
    );
  });

  it('every aspect_ratio the schema accepts resolves to a valid output size; the rest are refused naming aspect_ratio', () => {
    fc.assert(
      fc.property(fc.tuple(fc.integer({ min: 0, max: 99 }), fc.integer({ min: 0, max: 99 })), megapixels, ([w, h], mp) => {
        const parsed = EditInputSchema.safeParse({ prompt: 'p', image_urls: ['https://example.com/a.png'], aspect_ratio: `${w}:${h}`, output_megapixels: mp });
        if (!parsed.success) {
          expect(parsed.error.issues.some((i) => i.path.join('.') === 'aspect_ratio')).toBe(true);
          return;
        }
        const r = resolveAliases(parsed.data as never);
        // The size must be one the explicit width/height fields would accept (engine protocol: multiples of 16).
        for (const side of [r.width!, r.height!]) {
          expect(side % 16).toBe(0);
          expect(side).toBeGreaterThanOrEqual(64);
          expect(side).toBeLessThanOrEqual(4096);
        }
        expect(r.width! * r.height!).toBeLessThanOrEqual(MAX_OUTPUT_PIXELS);
      }),
    );
  });

  it('precedence: width/height over image_size over aspect_ratio', () => {
    const dim = fc.integer({ min: 4, max: 64 }).map((x) => x * 16);
    const preset = fc.constantFrom(...(Object.keys(IMAGE_SIZE_PRESETS) as (keyof typeof IMAGE_SIZE_PRESETS)[]));
    fc.assert(
      fc.property(fc.option(fc.tuple(dim, dim)), fc.option(fc.oneof(preset, fc.record({ width: dim, height: dim }))), fc.constantFrom('16:9', '1:1', '3:4', 'match_input_image'), (wh, size, aspect) => {
        const r = resolveAliases({ ...(wh ? { width: wh[0], height: wh[1] } : {}), ...(size ? { image_size: size } : {}), aspect_ratio: aspect });
        const expected = wh
          ? { width: wh[0], height: wh[1] }
          : size
            ? typeof size === 'string' ? IMAGE_SIZE_PRESETS[size] : size
            : aspect === 'match_input_image' ? { width: null, height: null } : sizeForAspect(aspect);
        expect({ width: r.width, height: r.height }).toEqual({ width: expected.width, height: expected.height });
      }),
    );
  });
});
