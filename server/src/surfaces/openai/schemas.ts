// OpenAI's image request fields as its SDK sends them (multipart fields arrive as strings, hence coerce).
import { z } from 'zod';
import { INPUT_LIMITS } from '../../runs/limits.ts';

export const OpenAiParamsSchema = z.strictObject({
  prompt: z.string().trim().min(1, 'must not be empty').max(INPUT_LIMITS.maxPromptChars),
  n: z.coerce.number().int().min(1).max(INPUT_LIMITS.maxOutputs).optional(),
  size: z
    .string()
    .regex(/^(auto|\d{2,4}x\d{2,4})$/, 'use WxH (e.g. 1024x1024) or auto')
    .optional(),
  response_format: z.enum(['b64_json', 'url']).optional(),
  output_format: z.enum(['jpeg', 'png', 'webp']).optional(),
  output_compression: z.coerce.number().int().min(1).max(100).optional(),
  seed: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  num_inference_steps: z.coerce.number().int().min(1).max(INPUT_LIMITS.maxSteps).optional(),
  // Sent by the openai SDK and by habit; accepted and not used (there is one model here).
  model: z.string().optional(),
  user: z.string().optional(),
  quality: z.string().optional(),
  style: z.string().optional(),
});
export type OpenAiParams = z.infer<typeof OpenAiParamsSchema>;
