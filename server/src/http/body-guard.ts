// Checks every parsed request body before any validation, route or store sees it: nesting no deeper than
// MAX_BODY_DEPTH (deeper values crash recursive code such as JSON.stringify, far under the size limit) and
// well-formed Unicode in every string and key (an unpaired UTF-16 surrogate, legal in JSON's \u escapes,
// is not text and breaks encoders downstream). A refusal is a 422 naming the field.
import fp from 'fastify-plugin';
import type { FastifyInstance } from 'fastify';
import { invalidInput, type FieldError } from '../errors.ts';

/** Levels of objects and arrays a body may nest (the body itself is level 1). */
export const MAX_BODY_DEPTH = 32;
/** Field names in answers are cut to this many characters: keys are client-chosen and unbounded. */
const MAX_FIELD_CHARS = 200;

/**
 * The body's problems, at most one per kind (the shallowest found first), without recursion so that no
 * nesting can overflow the stack here either.
 */
export function checkBody(body: unknown, maxDepth = MAX_BODY_DEPTH): FieldError[] {
  if (!isContainer(body)) {
    return typeof body === 'string' && !wellFormed(body) ? [{ field: '(body)', reason: UNICODE_REASON }] : [];
  }
  const errors: FieldError[] = [];
  let tooDeep = false;
  let badText = false;
  const stack: { value: object; path: string[]; depth: number }[] = [{ value: body as object, path: [], depth: 1 }];
  while (stack.length && !(tooDeep && badText)) {
    const { value, path, depth } = stack.pop()!;
    const entries: [string, unknown][] = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
    for (const [key, child] of entries) {
      const childPath = [...path, Array.isArray(value) ? `[${key}]` : key];
      if (!badText && !Array.isArray(value) && !wellFormed(key)) {
        badText = true;
        errors.push({ field: fieldName(childPath), reason: `key ${UNICODE_REASON}` });
      }
      if (typeof child === 'string') {
        if (!badText && !wellFormed(child)) {
          badText = true;
          errors.push({ field: fieldName(childPath), reason: UNICODE_REASON });
        }
      } else if (isContainer(child)) {
        if (depth + 1 > maxDepth) {
          if (!tooDeep) errors.push({ field: fieldName(childPath), reason: `nests deeper than ${maxDepth} levels` });
          tooDeep = true;
        } else {
          stack.push({ value: child, path: childPath, depth: depth + 1 });
        }
      }
    }
  }
  return errors;
}

/**
 * Parsed JSON: plain objects and arrays. Raw bodies (a Buffer of an upload, a stream) are bytes, not
 * text, and walking them entry by entry would cost a step per byte.
 */
function isContainer(v: unknown): v is object {
  if (v === null || typeof v !== 'object') return false;
  if (Array.isArray(v)) return true;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

// String.prototype.isWellFormed (Node 20+) checks for unpaired surrogates natively; the typings lag.
const wellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed();

const UNICODE_REASON = 'is not valid Unicode text (it contains an unpaired UTF-16 surrogate)';

/** `input.image_urls[2]`-style, with odd characters shown safely and the whole cut to a bounded length. */
function fieldName(path: string[]): string {
  let out = '';
  for (const seg of path) {
    const s = (seg as unknown as { toWellFormed(): string }).toWellFormed();
    out += s.startsWith('[') ? s : /^[A-Za-z_][A-Za-z0-9_-]*$/.test(s) ? (out ? `.${s}` : s) : `[${JSON.stringify(s)}]`;
    if (out.length > MAX_FIELD_CHARS) return out.slice(0, MAX_FIELD_CHARS) + '…';
  }
  return out || '(body)';
}

export default fp(
  async function bodyGuard(app: FastifyInstance) {
    // preValidation: after the body is parsed, before schemas, quotas' body reads, routes and stores.
    app.addHook('preValidation', async (req) => {
      if (req.body === undefined) return;
      const errors = checkBody(req.body);
      if (errors.length) throw invalidInput(errors);
    });
  },
  { name: 'body-guard' },
);
