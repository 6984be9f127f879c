// A one-line progress bar on stderr, redrawn in place on a TTY and printed as plain lines otherwise (CI logs).
export class ProgressBar {
  private lastLine = '';
  constructor(private readonly out: NodeJS.WriteStream = process.stderr, private readonly width = 24) {}

  private get tty(): boolean {
    return Boolean(this.out.isTTY);
  }

  render(fraction: number, label: string): void {
    const filled = Math.round(Math.max(0, Math.min(1, fraction)) * this.width);
    const line = `[${'#'.repeat(filled)}${'-'.repeat(this.width - filled)}] ${label}`;
    if (line === this.lastLine) return;
    this.lastLine = line;
    if (this.tty) this.out.write(`\r\x1b[2K${line}`);
    else this.out.write(`${line}\n`);
  }

  /** A line that stays (a finished file, an error), printed above the bar. */
  log(message: string): void {
    if (this.tty) this.out.write(`\r\x1b[2K${message}\n${this.lastLine}`);
    else this.out.write(`${message}\n`);
  }

  done(): void {
    if (this.tty && this.lastLine) this.out.write('\n');
    this.lastLine = '';
  }
}
