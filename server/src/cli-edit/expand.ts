// Turns `kleinserve edit` operands (files, directories, quoted globs) into the image files to edit, in a stable order.
import fs from 'node:fs';
import path from 'node:path';

export const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp', '.gif', '.avif', '.tif', '.tiff', '.heic', '.heif']);

const isImage = (p: string) => IMAGE_EXTENSIONS.has(path.extname(p).toLowerCase());

/** `*` and `?` stay within one path segment; `**` spans any number of segments. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      re += glob[i + 2] === '/' ? '(?:.*/)?' : '.*';
      i += glob[i + 2] === '/' ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function walk(dir: string, recursive: boolean): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory() && recursive) out.push(...walk(p, true));
    else if (entry.isFile()) out.push(p);
  }
  return out;
}

/** The absolute path, when it says more than what the person typed. */
export const elsewhere = (p: string) => (path.resolve(p) === p ? '' : ` (${path.resolve(p)})`);

/** Files already produced by an earlier batch (name ends with the suffix) are skipped, so re-running is safe. */
export function expandInputs(operands: string[], suffix: string): string[] {
  const found = new Set<string>();
  for (const op of operands) {
    if (/[*?]/.test(op)) {
      const norm = op.split(path.sep).join('/');
      const staticPart = norm.split('/').filter((_, i, all) => !/[*?]/.test(all.slice(0, i + 1).join('/'))).join('/');
      const base = staticPart || '.';
      const re = globToRegExp(norm.startsWith('./') ? norm.slice(2) : norm);
      for (const f of walk(base, norm.includes('**') || norm.slice(staticPart.length + 1).includes('/'))) {
        const rel = f.split(path.sep).join('/');
        if (re.test(rel) || re.test(rel.replace(/^\.\//, ''))) found.add(f);
      }
    } else if (fs.existsSync(op) && fs.statSync(op).isDirectory()) {
      for (const f of walk(op, false)) found.add(f);
    } else if (fs.existsSync(op)) {
      found.add(op);
    } else {
      throw new Error(`${op}: no such file or directory${elsewhere(op)}`);
    }
  }
  const stem = (f: string) => path.basename(f, path.extname(f));
  return [...found].filter((f) => isImage(f) && !stem(f).endsWith(suffix)).sort();
}

/** photos/cat.png -> photos/cat.edited.png (or .jpg when the output format differs). */
export function outputPathFor(input: string, suffix: string, ext: string): string {
  const dir = path.dirname(input);
  return path.join(dir, `${path.basename(input, path.extname(input))}${suffix}.${ext}`);
}
