/**
 * The one error type for every refused image input. The control plane maps it to a 422
 * INPUT_VALIDATION_FAILED whose errors[] entry is { field, reason }, so both parts stay separate.
 */
export class ImageInputError extends Error {
  readonly field: string;
  readonly reason: string;

  constructor(field: string, reason: string, options?: { cause?: unknown }) {
    super(`${field}: ${reason}`, options);
    this.name = 'ImageInputError';
    this.field = field;
    this.reason = reason;
  }
}

export function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}
