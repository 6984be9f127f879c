// The error body of the surfaces whose providers run on FastAPI (fal, BFL): their clients read `detail`
// (FastAPI's {loc, msg, type} list for field errors, else a string), and the contract's fields ride alongside.
const FIELD_ERRORS = { type: 'array', items: { type: 'object', required: ['field', 'reason'], properties: { field: { type: 'string' }, reason: { type: 'string' } } } };

/** That body in OpenAPI. */
export const FASTAPI_ERROR_JSON_SCHEMA = {
  type: 'object',
  required: ['detail', 'code', 'message', 'errors'],
  properties: {
    detail: {
      oneOf: [
        { type: 'string' },
        { type: 'array', items: { type: 'object', required: ['loc', 'msg', 'type'], properties: { loc: { type: 'array' }, msg: { type: 'string' }, type: { type: 'string' } } } },
      ],
    },
    code: { type: 'string' },
    message: { type: 'string' },
    errors: FIELD_ERRORS,
  },
};
