import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ALIAS_FIELDS, ImageSizeSchema, resolveAliases } from '../../src/surfaces/runflow/input-aliases.ts';
import { sizeForAspect } from '../../src/runs/sizes.ts';

describe('input aliases', () => {
  it('lets steps win over num_inference_steps, and leaves steps unset for the checkpoint to default', () => {
    expect(resolveAliases({ steps: 3, num_inference_steps: 8 }).steps).toBe(3);
    expect(resolveAliases({ num_inference_steps: 8 }).steps).toBe(8);
    // Intake fills in the loaded checkpoint's own default (4 distilled, 50 base; test/lora/guidance-safety).
    expect(resolveAliases({}).steps).toBeUndefined();
  });

  it('takes width/height over image_size over aspect_ratio', () => {
    expect(resolveAliases({ width: 512, height: 256, image_size: 'square_hd', aspect_ratio: '16:9' })).toMatchObject({ width: 512, height: 256 });
    expect(resolveAliases({ image_size: 'landscape_16_9', aspect_ratio: '1:1' })).toMatchObject({ width: 1024, height: 576 });
    expect(resolveAliases({ image_size: { width: 320, height: 640 } })).toMatchObject({ width: 320, height: 640 });
    expect(resolveAliases({ aspect_ratio: '1:1', output_megapixels: 0.25 })).toMatchObject({ width: 496, height: 496 });
    expect(resolveAliases({ aspect_ratio: 'match_input_image', output_megapixels: 2 })).toMatchObject({ width: null, height: null });
  });

  it('keeps aspect sizes on the 16 grid and under the output cap', () => {
    for (const r of ['16:9', '9:16', '4:3', '3:2', '21:9', '1:1']) {
      for (const mp of [0.25, 1, 4]) {
        const { width, height } = sizeForAspect(r, mp);
        expect(width % 16).toBe(0);
        expect(height % 16).toBe(0);
        expect(width * height).toBeLessThanOrEqual(4_194_304);
        const [a, b] = r.split(':').map(Number);
        expect(Math.abs(width / height - a / b)).toBeLessThan(0.06);
      }
    }
  });

  it('validates alias fields with reasons', () => {
    const schema = z.strictObject({ ...ALIAS_FIELDS, image_size: ImageSizeSchema.optional() });
    expect(schema.safeParse({ num_images: 5 }).success).toBe(false);
    expect(schema.safeParse({ image_size: 'huge' }).success).toBe(false);
    expect(schema.safeParse({ aspect_ratio: 'wide' }).success).toBe(false);
    expect(schema.parse({ output_megapixels: '0.5', num_images: 2, sync_mode: true })).toEqual({ output_megapixels: 0.5, num_images: 2, sync_mode: true });
  });
});
