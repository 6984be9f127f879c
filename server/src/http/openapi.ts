// Makes /openapi.json tell the truth about errors every route can give, so clients and fuzzers (schemathesis)
// can rely on it: public routes need no key, any route may answer 400/413/415/431 from the HTTP layer,
// keyed ones 401, routes with path parameters 404, creates 429 (quotas) and 503 (model unavailable).
// Only the document changes; responses are still serialized by each route's own schemas.
import type { FastifyInstance } from 'fastify';

type Json = Record<string, any>;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route creates runs: it may answer 409 (idempotency), 429 (quotas, full cluster) and 503. */
    createsRun?: boolean;
  }
}

const ERROR_REF = { $ref: '#/components/schemas/Error' };
const DESCRIPTIONS: Record<string, string> = {
  '400': 'Malformed request (bad JSON, bad header)',
  '401': 'Missing or invalid API key',
  '404': 'Not found',
  '405': 'Method not allowed on this path',
  '409': 'A request with the same idempotency key is still being processed',
  '413': 'Body larger than the server accepts',
  '415': 'Unsupported content type',
  '422': 'Invalid input; `errors` names each field',
  '429': 'Rate limit or quota reached; see Retry-After',
  '503': 'Model unavailable',
};

/** Public routes and the ones that create runs, collected as routes are added (OpenAPI paths use {param}). */
export function collectRouteFacts(app: FastifyInstance): { isPublic: Set<string>; creates: Set<string> } {
  const facts = { isPublic: new Set<string>(), creates: new Set<string>() };
  app.addHook('onRoute', (route) => {
    const path = route.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    for (const m of methods) {
      const key = `${m.toLowerCase()} ${path}`;
      if (route.config?.public) facts.isPublic.add(key);
      if (route.config?.createsRun) facts.creates.add(key);
    }
  });
  return facts;
}

// The OpenAI-compatible routes add OpenAI's own `error` object next to the contract's fields.
const OPENAI_ERROR = {
  type: 'object',
  required: ['code', 'message', 'errors', 'error'],
  properties: {
    code: { type: 'string' },
    message: { type: 'string' },
    errors: { type: 'array', items: { type: 'object' } },
    error: { type: 'object', required: ['message', 'type'], properties: { message: { type: 'string' }, type: { type: 'string' } } },
  },
};

function errorResponse(code: string, path: string): Json {
  const schema = path.startsWith('/v1/images/') ? OPENAI_ERROR : ERROR_REF;
  return { description: DESCRIPTIONS[code], content: { 'application/json': { schema } } };
}

export function documentErrors(doc: Json, facts: { isPublic: Set<string>; creates: Set<string> }): Json {
  for (const [path, item] of Object.entries<Json>(doc.paths ?? {})) {
    for (const [method, op] of Object.entries<Json>(item)) {
      if (typeof op !== 'object' || !op.responses) continue;
      const key = `${method} ${path}`;
      const codes = ['400', '431'];
      if (facts.isPublic.has(key)) op.security = [];
      else codes.push('401');
      if (path.includes('{')) codes.push('404');
      if (op.requestBody || ['post', 'put', 'patch'].includes(method)) codes.push('413', '415', '422');
      if (op.parameters?.length) codes.push('422');
      if (facts.creates.has(key)) codes.push('409', '429', '503');
      for (const code of codes) {
        op.responses[code] ??= code === '431' ? { description: 'Request headers too large' } : errorResponse(code, path);
      }
    }
  }
  return doc;
}
