// Big photos are shrunk in the browser before upload: the engine downscales references to its pixel cap anyway
// (limits.max_ref_pixels from /v1/health), so sending more only costs upload time and request-size headroom.
let capPromise: Promise<number> | null = null;

function refPixelCap(): Promise<number> {
  capPromise ??= fetch('/v1/health')
    .then((r) => r.json())
    .then((h) => Number(h?.engine?.limits?.max_ref_pixels) || 1_048_576)
    .catch(() => 1_048_576);
  return capPromise;
}

/** Returns the file itself when it is small enough, else a JPEG at the cap (EXIF orientation applied). */
export async function shrinkForUpload(file: Blob): Promise<Blob> {
  const cap = await refPixelCap();
  if (typeof createImageBitmap !== 'function') return file;
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
  } catch {
    return file; // let the server name the problem with this image
  }
  const pixels = bitmap.width * bitmap.height;
  if (pixels <= cap) { bitmap.close(); return file; }
  const scale = Math.sqrt(cap / pixels);
  const canvas = document.createElement('canvas');
  canvas.width = Math.max(1, Math.floor(bitmap.width * scale));
  canvas.height = Math.max(1, Math.floor(bitmap.height * scale));
  const ctx = canvas.getContext('2d')!;
  ctx.imageSmoothingQuality = 'high';
  ctx.fillStyle = '#fff'; // transparent areas flatten on white, as the server does
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return new Promise((resolve) => canvas.toBlob((b) => resolve(b ?? file), 'image/jpeg', 0.95));
}
