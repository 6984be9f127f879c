/**
 * Image inputs for the control plane: parse an `image_urls` entry, fetch URLs behind the SSRF
 * guard, decode to the engine's rgb8 reference. Every refusal is an ImageInputError(field, reason).
 */
export { ImageInputError } from './errors.js';
export { parseImageSource, DEFAULT_MAX_INLINE_BYTES, type ImageSource, type SourceOptions } from './source.js';
export { parseAllowlist, EMPTY_ALLOWLIST, type FetchAllowlist } from './allowlist.js';
export { checkUrlAllowed, systemResolver, type HostResolver, type ResolvedAddress } from './guard.js';
export { fetchImage, guardedAgent, type FetchOptions } from './fetch.js';
export { decodeImage, fitWithin, DEFAULT_DECODE_OPTIONS, type DecodedImage, type DecodeOptions } from './decode.js';
