// API keys. Only SHA-256 hashes are kept (in memory, and in the data dir for a generated key), so a leaked
// data directory does not leak usable keys.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const KEY_PATTERN = /^[A-Za-z0-9_]+$/;

export const hashKey = (key: string): string => createHash('sha256').update(key).digest('hex');

export class KeyRing {
  private readonly hashes: Set<string>;

  constructor(hashes: Iterable<string>) {
    this.hashes = new Set(hashes);
  }

  /** Hash-then-lookup: the comparison never touches the secret itself, so it leaks no timing about it. */
  check(presented: string | undefined): boolean {
    return presented !== undefined && this.hashes.has(hashKey(presented));
  }

  get size(): number {
    return this.hashes.size;
  }
}

function generateKey(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(32);
  let s = '';
  for (const b of bytes) s += alphabet[b % alphabet.length];
  return `ks_live_${s}`;
}

/**
 * Configured keys win. With none configured, the data dir's key file is used; on first start one key is
 * generated, its hash stored, and the key itself returned once so the caller can print it.
 */
export function loadKeys(configured: string[], dataDir: string): { ring: KeyRing; generated: string | null } {
  if (configured.length) return { ring: new KeyRing(configured.map(hashKey)), generated: null };
  const file = path.join(dataDir, 'api-keys.json');
  if (fs.existsSync(file)) {
    const stored = JSON.parse(fs.readFileSync(file, 'utf8')) as { sha256: string[] };
    return { ring: new KeyRing(stored.sha256), generated: null };
  }
  const key = generateKey();
  fs.writeFileSync(file, JSON.stringify({ sha256: [hashKey(key)] }, null, 2) + '\n', { mode: 0o600 });
  return { ring: new KeyRing([hashKey(key)]), generated: key };
}
