export { Kleinserve, Kleinserve as KleinserveClient } from './client.js';
export type { EditParams, GenerateParams, CallOptions, RunResult } from './client.js';
export { Runs, EDIT_MODEL_PATH, TEXT_TO_IMAGE_MODEL_PATH } from './runs.js';
export type { CreateOptions, WaitOptions } from './runs.js';
export { KleinserveError, KleinserveConnectionError, RunFailedError } from './errors.js';
export type { FieldError } from './errors.js';
export { toImageUrl, toDataUri, sniffMime } from './images.js';
export { parseSse } from './sse.js';
export * from './types.js';
