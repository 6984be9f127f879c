// Output sizes from the ways providers ask for them: fal's named presets and Replicate's aspect ratio at an
// area, always snapped to the engine's side stride and kept under its output cap.
import { INPUT_LIMITS } from './limits.ts';

/** fal's image_size presets. */
export const IMAGE_SIZE_PRESETS = {
  square_hd: { width: 1024, height: 1024 },
  square: { width: 512, height: 512 },
  portrait_4_3: { width: 768, height: 1024 },
  portrait_16_9: { width: 576, height: 1024 },
  landscape_4_3: { width: 1024, height: 768 },
  landscape_16_9: { width: 1024, height: 576 },
} as const;
export type ImageSizePreset = keyof typeof IMAGE_SIZE_PRESETS;

const { maxOutputPixels, maxSide, minSide, sideMultiple } = INPUT_LIMITS;
const snap = (x: number) => Math.max(minSide, Math.round(x / sideMultiple) * sideMultiple);

/** W:H at an area of `megapixels`, snapped to the side stride and kept under the engine's output cap. */
export function sizeForAspect(ratio: string, megapixels = 1): { width: number; height: number } {
  const [w, h] = ratio.split(':').map(Number);
  if (!(w > 0 && h > 0)) throw new RangeError(`aspect_ratio ${ratio}: both sides must be positive`);
  const area = Math.min(megapixels * 1_000_000, maxOutputPixels);
  // Shrink both sides together to fit the side cap, rather than clipping one afterwards, which skewed the ratio.
  const fit = Math.min(1, maxSide / Math.sqrt((area * w) / h), maxSide / Math.sqrt((area * h) / w));
  let width = snap(Math.sqrt((area * w) / h) * fit);
  let height = snap((width * h) / w);
  while (width * height > maxOutputPixels) { width -= sideMultiple; height = snap((width * h) / w); }
  return { width: Math.min(width, maxSide), height: Math.min(height, maxSide) };
}
