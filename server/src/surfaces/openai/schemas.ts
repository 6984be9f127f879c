// OpenAI's image request fields as its SDK sends them (multipart fields arrive as strings, hence coerce).
import { z } from 'zod';
import { INPUT_LIMITS, inputFields } from '../../runs/limits.ts';

/** Multipart fields arrive as text: a JSON array there, an array in a JSON body. */
const jsonText = (v: unknown) => {
  if (typeof v !== 'string') return v;
  try {
    return JSON.parse(v);
  } catch {
    return v;
  }
};

/** A number, or (multipart) its text: coercion limited to text, so JSON null, booleans and "" stay refused. */
const numeric = <T extends z.ZodType<number, number>>(n: T) => z.union([n, z.string().trim().min(1).transform(Number)]).pipe(n);

export const OpenAiParamsSchema = z.strictObject({
  prompt: z.string().trim().min(1, 'must not be empty').max(INPUT_LIMITS.maxPromptChars),
  n: numeric(z.number().int().min(1).max(INPUT_LIMITS.maxOutputs)).optional(),
  size: z
    .string()
    .regex(/^(auto|\d{2,4}x\d{2,4})$/, 'use WxH (e.g. 1024x1024) or auto')
    .optional(),
  response_format: z.enum(['b64_json', 'url']).optional(),
  output_format: z.enum(['jpeg', 'png', 'webp']).optional(),
  output_compression: numeric(z.number().int().min(1).max(100)).optional(),
  seed: numeric(z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)).optional(),
  num_inference_steps: numeric(z.number().int().min(1).max(INPUT_LIMITS.maxSteps)).optional(),
  guidance_scale: numeric(z.number().min(INPUT_LIMITS.minGuidance).max(INPUT_LIMITS.maxGuidance)).optional()
    .describe('base checkpoints only; a distilled checkpoint refuses anything but 1 (422)'),
  negative_prompt: inputFields.negativePrompt().optional().describe('base checkpoints with guidance_scale above 1'),
  loras: z.preprocess(jsonText, inputFields.loras()).optional().describe('[{path, scale}] (in multipart: that array as JSON text)'),
  deterministic: z.preprocess(jsonText, inputFields.deterministic()).optional(),
  // Sent by the openai SDK and by habit; accepted and not used (there is one model here).
  model: z.string().optional(),
  user: z.string().optional(),
  quality: z.string().optional(),
  style: z.string().optional(),
});
export type OpenAiParams = z.infer<typeof OpenAiParamsSchema>;

/** The JSON Schema of the request fields, for the OpenAPI document (the routes parse the bodies themselves). */
export const openAiParamsJsonSchema = (): Record<string, any> => {
  const { $schema: _, ...schema } = z.toJSONSchema(OpenAiParamsSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, any>;
  return schema;
};

export const ImagesResponseSchema = z
  .object({
    created: z.int().describe('Unix seconds when the run was created'),
    data: z.array(z.object({ b64_json: z.string().optional(), url: z.string().optional() })),
    output_format: z.string().optional(),
    size: z.string().optional().describe('WxH of the outputs'),
    seed: z.number().optional(),
    timings: z.record(z.string(), z.number()).optional().describe("The run's stage timings in ms"),
  })
  .meta({ id: 'ImagesResponse' });

export const ModelSchema = z
  .object({ id: z.string(), object: z.literal('model'), created: z.int(), owned_by: z.string() })
  .meta({ id: 'Model' });

export const ModelListSchema = z.object({ object: z.literal('list'), data: z.array(ModelSchema) }).meta({ id: 'ModelList' });

export const ModelParamsSchema = z.object({ model: z.string().max(200) });

/** OpenAI's error object, sent next to the contract's {code, message, errors} so both kinds of client read it. */
export const OPENAI_ERROR_JSON_SCHEMA = {
  type: 'object',
  required: ['code', 'message', 'errors', 'error'],
  properties: {
    code: { type: 'string' },
    message: { type: 'string' },
    errors: { type: 'array', items: { type: 'object', properties: { field: { type: 'string' }, reason: { type: 'string' } } } },
    error: {
      type: 'object',
      required: ['message', 'type', 'param', 'code'],
      properties: { message: { type: 'string' }, type: { type: 'string' }, param: { type: ['string', 'null'] }, code: { type: ['string', 'null'] } },
    },
  },
};
