// What the control plane can tell about a LoRA file without a model: is it safetensors, does it hold LoRA
// down/up pairs, and its largest rank. Only the JSON header is read. Whether its modules exist in the loaded
// model is the engine's call (it owns the key-layout conversion).
import { LoraRefusal } from './source.ts';

/** The key layouts the engine reads (diffusers/PEFT, BFL, kohya, ai-toolkit): the "down" half of each pair. */
const DOWN = /\.(lora_A|lora_down|lora\.down)(\.[A-Za-z0-9_-]+)?\.weight$/;
const UP = /\.(lora_B|lora_up|lora\.up)(\.[A-Za-z0-9_-]+)?\.weight$/;
const MAX_HEADER = 100 << 20;

export interface LoraFacts {
  pairs: number;
  rank: number;
}

/** Reads the header of `bytes` (the start of the file is enough) and checks it against `maxRank`. */
export function inspectLora(bytes: Buffer, field: string, maxRank: number | null): LoraFacts {
  const notLora = (why: string) => new LoraRefusal(field, 'not_a_lora', why);
  if (bytes.length < 8) throw notLora('not a safetensors file (shorter than its header)');
  const n = bytes.readBigUInt64LE(0);
  if (n < 2n || n > BigInt(MAX_HEADER) || Number(n) > bytes.length - 8) throw notLora('not a safetensors file (bad header length)');
  let header: Record<string, { shape?: number[] }>;
  try {
    header = JSON.parse(bytes.subarray(8, 8 + Number(n)).toString('utf8'));
  } catch {
    throw notLora('not a safetensors file (header is not JSON)');
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) throw notLora('not a safetensors file');
  let pairs = 0;
  let rank = 0;
  let ups = 0;
  for (const [key, t] of Object.entries(header)) {
    if (key === '__metadata__') continue;
    if (UP.test(key)) ups++;
    if (!DOWN.test(key)) continue;
    pairs++;
    const r = Array.isArray(t?.shape) ? Number(t.shape[0]) : 0;
    if (Number.isFinite(r)) rank = Math.max(rank, r);
  }
  if (pairs === 0 || ups === 0) throw notLora('no LoRA down/up weight pairs in the file (lora_A/lora_B, lora_down/lora_up)');
  if (maxRank !== null && rank > maxRank) {
    throw new LoraRefusal(field, 'rank_too_large', `rank ${rank} exceeds this server's limit of ${maxRank}`);
  }
  return { pairs, rank };
}
