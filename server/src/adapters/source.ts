// Where a LoRA named by a request lives, read from the text alone (no I/O), so the API can refuse a malformed
// name at once. Three forms: an http(s) URL; a Hugging Face repo id, optionally `repo:path/in/repo.safetensors`;
// or a bare file name in the operator's adapters directory.

export type LoraSource =
  | { kind: 'url'; url: URL }
  | { kind: 'hub'; repo: string; file: string | null }
  | { kind: 'local'; name: string };

/** Why a LoRA was refused; the same words the engine uses, so one list documents both. */
export type LoraRefusalReason = 'unreadable' | 'unreachable' | 'too_large' | 'not_a_lora' | 'rank_too_large' | 'not_allowed' | 'invalid';

/** A refused adapter, naming the request field (`input.loras[i].path`) and the reason. */
export class LoraRefusal extends Error {
  constructor(
    readonly field: string,
    readonly reason: LoraRefusalReason,
    readonly detail: string,
  ) {
    super(`${field}: ${reason}: ${detail}`);
  }

  /** The refusal as a FieldError's reason text: the machine-readable reason first, then the detail. */
  get text(): string {
    return `${this.reason}: ${this.detail}`;
  }
}

const REPO = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;
const REPO_FILE = /^(?:[A-Za-z0-9_][A-Za-z0-9._ -]*\/)*[A-Za-z0-9_][A-Za-z0-9._ -]*\.safetensors$/;
const LOCAL_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$/;

export function parseLoraSource(path: string, field: string): LoraSource {
  if (/^https?:\/\//i.test(path)) {
    try {
      return { kind: 'url', url: new URL(path) };
    } catch {
      throw new LoraRefusal(field, 'invalid', 'not a valid URL');
    }
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(path)) throw new LoraRefusal(field, 'invalid', 'only http(s) URLs are fetched');
  if (path.includes('/')) {
    const colon = path.indexOf(':');
    const repo = colon < 0 ? path : path.slice(0, colon);
    const file = colon < 0 ? null : path.slice(colon + 1);
    if (!REPO.test(repo) || repo.includes('..')) {
      throw new LoraRefusal(field, 'invalid', 'not a Hugging Face repo id (owner/name[:file.safetensors]), an http(s) URL, or a file name');
    }
    if (file !== null && (!REPO_FILE.test(file) || file.split('/').some((s) => s === '..' || s === '.'))) {
      throw new LoraRefusal(field, 'invalid', 'the file after ":" must be a .safetensors path inside the repo');
    }
    return { kind: 'hub', repo, file };
  }
  if (!LOCAL_NAME.test(path) || path === '.' || path === '..' || path.includes('..')) {
    throw new LoraRefusal(field, 'invalid', 'a local adapter is a file name in the adapters directory (letters, digits, . _ -)');
  }
  return { kind: 'local', name: path };
}

/** A stable key for what a source names, for remembering which content it resolved to. */
export function sourceKey(src: LoraSource): string {
  return src.kind === 'url' ? `url:${src.url.href}` : src.kind === 'hub' ? `hub:${src.repo}:${src.file ?? ''}` : `local:${src.name}`;
}
