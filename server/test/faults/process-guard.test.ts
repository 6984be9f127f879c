// The process guard in a real child process: an unhandled rejection and an exception thrown from a timer
// are logged, and the process keeps running (without the guard, Node ends it at the first).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const GUARD = path.resolve(import.meta.dirname, '../../src/process-guard.ts');

function runChild(guarded: boolean) {
  const script = `
    import { pino } from 'pino';
    import { guardProcess } from ${JSON.stringify(GUARD)};
    if (${guarded}) guardProcess(pino({ base: null }, pino.destination(1)));
    Promise.reject(new Error('escaped rejection'));
    setTimeout(() => { throw new Error('escaped exception'); }, 10);
    setTimeout(() => console.log('still serving'), 100);
  `;
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: path.resolve(import.meta.dirname, '../..'),
    encoding: 'utf8',
    timeout: 30_000,
  });
}

describe('process guard', () => {
  it('logs escaped errors and survives them', () => {
    const r = runChild(true);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('escaped rejection');
    expect(r.stdout).toContain('escaped exception');
    expect(r.stdout).toContain('still serving');
  });

  it('is what keeps the process up: without it Node ends at the first escaped error', () => {
    const r = runChild(false);
    expect(r.status).not.toBe(0);
    expect(r.stdout).not.toContain('still serving');
  });
});
