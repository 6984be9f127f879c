import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // The SDK's file-path support is Node-only and never reached in a browser.
    rollupOptions: { external: ['node:fs/promises', 'node:path'] },
  },
  server: { proxy: { '/v1': 'http://127.0.0.1:8080' } },
});
