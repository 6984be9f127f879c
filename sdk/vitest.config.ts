import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds the tiny model once; e2e files start the real server through server/test/helpers/server.ts.
    globalSetup: ['../server/test/global-setup.ts'],
    // Each e2e file starts a real server + engine; one at a time keeps 2 cores usable.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 180_000,
  },
});
