// Makes /openapi.json good enough to generate clients from and to fuzz against (schemathesis):
// - every operation has an operationId: explicit where a generated client would otherwise get an awkward
//   name (OPERATIONS below), else one derived from the method and the path's static segments (listRuns,
//   getRun, createImageEdit), made unique;
// - every operation has a description, every response a name (never "Default Response");
// - bodies a route reads or writes itself, which Fastify's schemas cannot describe (multipart, raw bytes,
//   image files, Server-Sent Events), come from the route's `config.docs` or from OPERATIONS;
// - the errors every route can give: public routes need no key, any route may answer 400/413/415/431 from
//   the HTTP layer, keyed ones (and public ones that check a key when sent) 401, routes with path parameters 404, creates 409/429/503 (model unavailable),
//   routes that take a body 429/503 too (the request-body budget, http/body-budget.ts).
// Only the document changes; responses are still serialized by each route's own schemas.
import type { FastifyInstance } from 'fastify';

type Json = Record<string, any>;

/** Documentation for what a route parses or writes by hand; merged over what its schemas generate. */
export interface RouteDocs {
  operationId?: string;
  description?: string;
  requestBody?: Json;
  /** Status code -> OpenAPI response object (description and content). */
  responses?: Record<string, Json>;
  /** The JSON schema of this route's error bodies, when it is not the contract's `Error`. */
  errorSchema?: Json;
  /** Error statuses of this route's own beyond those every route gets, each with what it means here. */
  errors?: Record<string, string>;
  /** The name of its success responses. */
  ok?: string;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route creates runs: it may answer 409 (idempotency), 429 (quotas, full cluster) and 503. */
    createsRun?: boolean;
    /** What the route's schemas cannot say (see RouteDocs). */
    docs?: RouteDocs;
  }
}

export const BINARY_IMAGE = { type: 'string', format: 'binary', contentMediaType: 'image/*' };

const imageFile = (description: string): Json => ({
  description,
  content: { 'image/jpeg': { schema: BINARY_IMAGE }, 'image/png': { schema: BINARY_IMAGE }, 'image/webp': { schema: BINARY_IMAGE } },
});

const EDIT_RUN = 'Creates an image-edit run from 1-4 reference images and a prompt. Answers at once with the queued run, or, with `Prefer: wait[=N]`, once the run ends or after N seconds (capped). Send `Idempotency-Key` to make retries safe.';
const T2I_RUN = 'Creates a text-to-image run. Answers like the edit route (`Prefer: wait` to hold).';
const SYNC_RUN = "Runflow's flat route: the inputs are the body, and the answer is the finished run.";

/**
 * Ids, descriptions and hand-written bodies of the routes whose derived id would be awkward. Keys are
 * "<method> <OpenAPI path>". `ok` names the success response(s).
 */
const OPERATIONS: Record<string, RouteDocs> = {
  'post /v1/models/black-forest-labs/flux-2-klein-4b/edit/runs': { operationId: 'createEditRun', description: EDIT_RUN, ok: 'The run: queued, or as it stands after `Prefer: wait`' },
  'post /v1/models/flux-2-klein-4b/edit/runs': { operationId: 'createEditRunShortId', description: `${EDIT_RUN} Alias of createEditRun.`, ok: 'The run' },
  'post /v1/models/black-forest-labs/flux-2-klein-4b/runs': { operationId: 'createTextToImageRun', description: T2I_RUN, ok: 'The run' },
  'post /v1/run/black-forest-labs/flux-2-klein-4b/edit': { operationId: 'runEdit', description: SYNC_RUN, ok: 'The finished run' },
  'post /v1/run/black-forest-labs/flux-2-klein-4b': { operationId: 'runTextToImage', description: SYNC_RUN, ok: 'The finished run' },
  'get /v1/runs/{id}': { operationId: 'getRun', description: 'Reads a run: status, output URLs and timings once it succeeded, the failure otherwise.', ok: 'The run' },
  'get /v1/runs': { operationId: 'listRuns', description: 'Lists runs newest first, a page at a time; filter by status.', ok: 'A page of runs' },
  'delete /v1/runs/{id}': { operationId: 'deleteRun', description: 'Cancels the run if it is live, then erases its inputs, outputs and record.', ok: 'The run as it was deleted' },
  'post /v1/runs/{id}/cancel': { operationId: 'cancelRun', description: 'Cancels a queued or running run: 201 when this call canceled it, 200 when it had already ended.', ok: 'The run' },
  'post /v1/admin/runs/{id}/cancellation': { operationId: 'cancelRunAdmin', description: "Runflow's cancel route; same answers as cancelRun.", ok: 'The run' },
  'get /v1/runs/{id}/events': {
    operationId: 'streamRunEvents',
    responses: {
      '200': {
        description: 'A Server-Sent Events stream: `status`, `progress` (one per denoise step) and finally `run` (the run object), then it closes',
        content: {
          'text/event-stream': {
            // Each event as Server-Sent Events parsers (and schemathesis) see it: its name and its JSON data line.
            schema: {
              type: 'object',
              required: ['event', 'data'],
              properties: {
                event: { type: 'string', enum: ['status', 'progress', 'run'] },
                data: { type: 'string', contentMediaType: 'application/json', description: 'status {run_id,status,at}; progress {run_id,step,steps,step_ms,elapsed_ms}; run: the run object' },
              },
            },
          },
        },
      },
    },
  },
  'get /v1/health': {
    operationId: 'getHealth',
    description:
      'Liveness and state. 200 while the process serves requests, with `ok: true` only once the engine is ready (and storage takes writes): ' +
      'while the model loads it is 200 with `status: "starting"`, `ok: false`. 503 when the engine is unavailable (it cannot load the model) ' +
      'or storage refuses writes (`status: "degraded"`). Wait loops should read `ok`, or probe /v1/readiness.',
    ok: 'The service is up; `ok` says whether runs can start',
  },
  'get /v1/readiness': {
    operationId: 'getReadiness',
    description: 'What load balancers and Kubernetes probe: 200 only while runs can start at once (engine ready, storage writable), 503 before (loading) and when unavailable.',
    ok: 'Ready',
  },
  'get /v1/auth/me': { operationId: 'getCurrentKey', description: 'Names the API key this request authenticated with (an id derived from its hash; never the key).', ok: 'The key' },
  'get /v1/outputs/{run}/{file}': {
    operationId: 'getOutputFile',
    description: 'An output image. The URL is unguessable and is its own authorisation (no key). Supports Range and ETag.',
    responses: { '200': imageFile('The image'), '206': imageFile('The requested byte range'), '304': { description: 'Not modified (ETag matched)' } },
  },
  'get /v1/inputs/{run}/{token}/{index}': {
    operationId: 'getInputFile',
    description: "A run's stored input image, at the unguessable URL the run's input lists.",
    responses: { '200': imageFile('The image') },
  },
  'get /v1/assets/{id}/{token}': {
    operationId: 'getAssetFile',
    description:
      'An uploaded asset, at the unguessable URL its upload answered. The URL is the authorisation, except for an asset ' +
      "uploaded through fal's storage (its file_url): that one also needs the key that uploaded it (401 without a key).",
    responses: { '200': imageFile('The image') },
  },
  'put /v1/asset-uploads/{id}/{token}': {
    operationId: 'uploadAssetBytes',
    description:
      'Uploads the bytes of a reserved asset (Runflow) or of a presigned upload (fal storage). The URL is the authorisation (no key). ' +
      'The body is read as a stream and refused (413) once it crosses the asset\'s bound: its declared size, or for fal the inline-image ' +
      'limit. A fal upload URL takes one upload, must be used within 15 minutes, and its bytes must be an image (422 naming `body`).',
    requestBody: { required: true, content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } },
    errors: { '409': 'The upload URL was already used (fal) or the asset is confirmed (Runflow)', '410': 'The upload URL expired' },
  },
};

const SUCCESS = { '200': 'OK', '201': 'Created', '202': 'Accepted', '204': 'No content', '206': 'Partial content', '304': 'Not modified' } as Record<string, string>;

const ERROR_REF = { $ref: '#/components/schemas/Error' };
const ERROR_DESCRIPTIONS: Record<string, string> = {
  '400': 'Malformed request (bad JSON, bad header)',
  '401': 'Missing or invalid API key',
  '404': 'Not found',
  '405': 'Method not allowed on this path',
  '409': 'The idempotency key is still in use by a request being processed, or was used with a different body',
  '413': 'Body larger than the server accepts',
  '415': 'Unsupported content type',
  '422': 'Invalid input; `errors` names each field',
  '429': "Rate limit or quota reached, or this key's request bodies in flight are at their bound; see Retry-After",
  '500': 'Internal error',
  '503': 'Model unavailable, or the server holds as many request bodies as it can (SERVER_BUSY; see Retry-After)',
};

interface RouteFacts {
  isPublic: Set<string>;
  /** Public routes that check a key when one is sent (401 on a bad one). */
  optionalKey: Set<string>;
  creates: Set<string>;
  docs: Map<string, RouteDocs>;
}

/** Public routes, creates and their docs, collected as routes are added (OpenAPI paths use {param}). */
export function collectRouteFacts(app: FastifyInstance): RouteFacts {
  const facts: RouteFacts = { isPublic: new Set(), optionalKey: new Set(), creates: new Set(), docs: new Map() };
  app.addHook('onRoute', (route) => {
    const path = route.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    for (const m of methods) {
      const key = `${m.toLowerCase()} ${path}`;
      if (route.config?.public) facts.isPublic.add(key);
      if (route.config?.public && route.config.optionalKey) facts.optionalKey.add(key);
      if (route.config?.createsRun) facts.creates.add(key);
      if (route.config?.docs) facts.docs.set(key, route.config.docs);
    }
  });
  return facts;
}

const pascal = (s: string) => s.split(/[^A-Za-z0-9]+/).filter(Boolean).map((w) => w[0].toUpperCase() + w.slice(1)).join('');
const isPlural = (s: string) => s.endsWith('s') && !/(ss|us)$/.test(s);
const singular = (s: string) => (isPlural(s) ? s.slice(0, -1) : s);
const VERBS: Record<string, string> = { get: 'get', post: 'create', put: 'replace', patch: 'update', delete: 'delete', head: 'head', options: 'options' };

/**
 * The derived operationId: a verb (`list` for a GET of a plural collection; an action segment after an id,
 * as in POST /runs/{id}/cancel; else get/create/replace/update/delete), then the path's static segments
 * without the version, singular but for the collection a list names: GET /v1/runs -> listRuns,
 * GET /v1/runs/{id} -> getRun, POST /v1/runs/{id}/cancel -> cancelRun, POST /v1/images/edits -> createImageEdit.
 */
export function conventionalOperationId(method: string, path: string): string {
  const segments = path.split('/').filter((s) => s && !/^v\d+$/.test(s));
  const isParam = (i: number) => segments[i]?.startsWith('{') ?? false;
  const lastIndex = segments.length - 1;
  const last = segments[lastIndex] ?? '';
  const action = method !== 'get' && lastIndex >= 1 && isParam(lastIndex - 1) && !isParam(lastIndex) && !isPlural(last) ? last : null;
  const collection = method === 'get' && lastIndex >= 0 && !isParam(lastIndex) && isPlural(last);
  const verb = action ?? (collection ? 'list' : (VERBS[method] ?? method));
  const nouns: string[] = [];
  segments.forEach((s, i) => {
    if (isParam(i) || (action && i === lastIndex)) return;
    nouns.push(collection && i === lastIndex ? s : singular(s));
  });
  return verb + (nouns.length ? pascal(nouns.join('-')) : 'Root');
}

function errorResponse(code: string, schema: Json, description = ERROR_DESCRIPTIONS[code]): Json {
  return { description, content: { 'application/json': { schema } } };
}

/** Completes the generated document: ids, descriptions, hand-written bodies, named responses, servers, errors. */
export function completeDocument(doc: Json, facts: RouteFacts, opts: { serverUrl?: string } = {}): Json {
  const used = new Set<string>();
  if (opts.serverUrl) doc.servers = [{ url: opts.serverUrl, description: 'This server' }];
  for (const [path, item] of Object.entries<Json>(doc.paths ?? {})) {
    for (const [method, shared] of Object.entries<Json>(item)) {
      if (typeof shared !== 'object' || !shared.responses) continue;
      // One route with several methods shares one operation object; each method needs its own id.
      const op = (item[method] = structuredClone(shared));
      const key = `${method} ${path}`;
      const docs: RouteDocs = { ...OPERATIONS[key], ...facts.docs.get(key) };

      let id = op.operationId ?? docs.operationId ?? conventionalOperationId(method, path);
      for (let n = 2; used.has(id); n++) id = `${op.operationId ?? docs.operationId ?? conventionalOperationId(method, path)}${n}`;
      used.add(id);
      op.operationId = id;
      op.description ??= docs.description ?? op.summary;
      op.summary ??= docs.description?.split('. ')[0];
      if (docs.requestBody) op.requestBody = docs.requestBody;
      for (const [code, response] of Object.entries(docs.responses ?? {})) op.responses[code] = response;
      for (const [code, response] of Object.entries<Json>(op.responses)) {
        if (response.description && response.description !== 'Default Response') continue;
        response.description = SUCCESS[code] && docs.ok ? docs.ok : (SUCCESS[code] ?? ERROR_DESCRIPTIONS[code] ?? `HTTP ${code}`);
      }

      const errorSchema = docs.errorSchema ?? ERROR_REF;
      const codes = ['400', '431'];
      if (facts.isPublic.has(key)) op.security = [];
      if (!facts.isPublic.has(key) || facts.optionalKey.has(key)) codes.push('401');
      if (path.includes('{')) codes.push('404');
      if (op.requestBody || ['post', 'put', 'patch'].includes(method)) codes.push('413', '415', '422', '429', '503');
      if (op.parameters?.length) codes.push('422');
      if (facts.creates.has(key)) codes.push('409', '429', '503');
      for (const code of codes) {
        op.responses[code] ??= code === '431' ? { description: 'Request headers too large' } : errorResponse(code, errorSchema);
      }
      for (const [code, description] of Object.entries(docs.errors ?? {})) op.responses[code] ??= errorResponse(code, errorSchema, description);
    }
  }
  return doc;
}
