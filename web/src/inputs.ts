/** The 1-4 reference images a person has chosen, as files or URLs, in order. */
export interface InputImage { id: number; label: string; src: string; file?: File; url?: string }

export const MAX_IMAGES = 4;

export class InputList {
  private items: InputImage[] = [];
  private nextId = 1;
  constructor(private readonly onChange: (items: readonly InputImage[]) => void) {}

  get all(): readonly InputImage[] { return this.items; }

  /** Adds what fits; returns how many were left out because of the 4-image limit. */
  addFiles(files: Iterable<File>): number {
    let dropped = 0;
    for (const file of files) {
      if (!file.type.startsWith('image/')) continue;
      if (this.items.length >= MAX_IMAGES) { dropped++; continue; }
      this.items.push({ id: this.nextId++, label: file.name || 'pasted image', src: URL.createObjectURL(file), file });
    }
    this.onChange(this.items);
    return dropped;
  }

  addUrl(url: string): boolean {
    if (this.items.length >= MAX_IMAGES) return false;
    this.items.push({ id: this.nextId++, label: url.split('/').pop() || url, src: url, url });
    this.onChange(this.items);
    return true;
  }

  remove(id: number) {
    const gone = this.items.find((i) => i.id === id);
    if (gone?.file) URL.revokeObjectURL(gone.src);
    this.items = this.items.filter((i) => i.id !== id);
    this.onChange(this.items);
  }

  /** What the SDK takes: Blobs for files (sent as data URIs), strings for URLs. */
  sources(): (Blob | string)[] {
    return this.items.map((i) => i.file ?? i.url!);
  }
}

export function renderThumbs(list: HTMLOListElement, items: readonly InputImage[], onRemove: (id: number) => void) {
  list.replaceChildren(...items.map((item, n) => {
    const li = document.createElement('li');
    const img = document.createElement('img');
    img.src = item.src;
    img.alt = `Image ${n + 1}: ${item.label}`;
    const cap = document.createElement('span');
    cap.className = 'cap';
    cap.textContent = `Image ${n + 1}`;
    const rm = document.createElement('button');
    rm.type = 'button';
    rm.textContent = '×';
    rm.setAttribute('aria-label', `Remove image ${n + 1}`);
    rm.addEventListener('click', () => onRemove(item.id));
    li.append(img, cap, rm);
    return li;
  }));
}

/** Wires drag-and-drop, paste anywhere on the page, and Enter/Space on the drop zone to open the file picker. */
export function wireDropZone(zone: HTMLElement, picker: HTMLInputElement, onFiles: (files: File[]) => void) {
  const open = () => picker.click();
  zone.addEventListener('click', open);
  zone.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); }
  });
  picker.addEventListener('change', () => {
    onFiles([...(picker.files ?? [])]);
    picker.value = '';
  });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    onFiles([...(e.dataTransfer?.files ?? [])]);
  });
  document.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files ?? [])].filter((f) => f.type.startsWith('image/'));
    if (files.length) { e.preventDefault(); onFiles(files); }
  });
}
