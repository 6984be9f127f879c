// A write that storage refused (full disk, read-only or failing volume, unreachable database or bucket), told
// apart from programming errors so callers can answer 507 for that request and keep serving the rest.

/** Errors meaning "no space": the volume, a quota, the SQLite file or the Postgres cluster is full. */
const FULL_CODES = new Set(['ENOSPC', 'EDQUOT', 'EFBIG', 'SQLITE_FULL', '53100']);

/** Node fs errors that are about the volume rather than the call. */
const FS_FAILURE_CODES = new Set(['EIO', 'EROFS', 'EACCES', 'EPERM', 'EMFILE', 'ENFILE', 'EBUSY']);

/** Errors meaning the Postgres server (or the connection to it) could not take the write. */
const NET_FAILURE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENOTFOUND']);

export type StorageFailureKind = 'full' | 'failed';

export class StorageWriteError extends Error {
  readonly kind: StorageFailureKind;
  /** The code of the underlying error (ENOSPC, SQLITE_FULL, 53100, ...), for logs and metrics. */
  readonly cause: unknown;

  constructor(
    /** What could not be written, as a client or operator would name it: `input.image_urls[0]`, `run record`. */
    readonly what: string,
    /** Which store refused: `objects` (disk or S3) or `runs` (SQLite or Postgres). */
    readonly store: 'objects' | 'runs',
    cause: unknown,
  ) {
    const kind: StorageFailureKind = FULL_CODES.has(codeOf(cause) ?? '') ? 'full' : 'failed';
    super(`could not store ${what}: ${kind === 'full' ? 'storage is full' : 'storage failed'} (${describe(cause)})`);
    this.kind = kind;
    this.cause = cause;
  }

  /** What went wrong without naming what (for public answers such as health): `storage is full (ENOSPC)`. */
  get reason(): string {
    const code = codeOf(this.cause);
    return `${this.kind === 'full' ? 'storage is full' : 'storage failed'}${code ? ` (${code})` : ''}`;
  }

  /** The same failure named after what the caller knows it as (an intake field rather than an object key). */
  renamed(what: string): StorageWriteError {
    return new StorageWriteError(what, this.store, this.cause);
  }
}

export function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function describe(err: unknown): string {
  const code = codeOf(err);
  const msg = err instanceof Error ? err.message : String(err);
  // Node's fs messages carry the absolute path; the code and the first words are what a client can use.
  const short = msg.replace(/,? (open|write|mkdir|rename|close|unlink) '[^']*'/, '').slice(0, 200);
  return code && !short.includes(code) ? `${code}: ${short}` : short;
}

/** True for errors that mean the storage itself refused the write (as opposed to a constraint or a bug). */
export function isStorageFailure(err: unknown): boolean {
  if (err instanceof StorageWriteError) return true;
  const code = codeOf(err);
  if (!code) return /Connection terminated|connection timeout|Client has encountered a connection error/i.test(String((err as Error)?.message));
  if (FULL_CODES.has(code) || FS_FAILURE_CODES.has(code) || NET_FAILURE_CODES.has(code)) return true;
  // SQLite: disk I/O, read-only database, cannot open, corrupt file, lock held past busy_timeout.
  if (/^SQLITE_(IOERR|READONLY|CANTOPEN|CORRUPT|NOTADB|BUSY|LOCKED|PROTOCOL)/.test(code)) return true;
  // Postgres SQLSTATE classes: 08 connection, 53 insufficient resources, 57P operator intervention,
  // 58 system error; 25006 a read-only transaction (a replica after failover).
  return /^(08|53|57P|58)[0-9A-Z]{3}$/.test(code) || code === '25006';
}

/** `err` as a StorageWriteError naming `what`, or `err` itself when it is not a storage failure. */
export function asStorageWriteError(what: string, store: 'objects' | 'runs', err: unknown): unknown {
  if (err instanceof StorageWriteError) return err;
  return isStorageFailure(err) ? new StorageWriteError(what, store, err) : err;
}

/**
 * An object key as errors and logs may show it: outputs and uploaded assets are named by their access
 * token (their URLs have no other access control), so any token-like run of hex digits is masked.
 */
export function keyForLogs(key: string): string {
  return key.replace(/[0-9a-f]{32,}/g, '<token>');
}

/** Called with every storage write failure a store converts; health and metrics listen here. */
export type WriteFailureListener = (err: StorageWriteError) => void;
