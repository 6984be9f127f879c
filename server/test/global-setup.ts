// Builds the tiny model once per test run; every e2e server then starts with `--model <dir>`.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';

export const PYTHON = process.env.KLEINSERVE_PYTHON || path.resolve(import.meta.dirname, '../../.venv/bin/python');

export default function setup(project: TestProject) {
  let dir = process.env.KLEINSERVE_TEST_MODEL_DIR;
  let made = false;
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ks-tiny-'));
    made = true;
    const r = spawnSync(PYTHON, ['-m', 'kleinserve_engine', 'make-tiny-model', dir], { stdio: 'inherit' });
    if (r.status !== 0) {
      // Unit tests still run; e2e suites check this and fail loudly.
      project.provide('tinyModelError', `make-tiny-model exited ${r.status}`);
    }
  }
  project.provide('tinyModelDir', dir);
  return () => {
    if (made) fs.rmSync(dir!, { recursive: true, force: true });
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    tinyModelDir: string;
    tinyModelError?: string;
  }
}
