#!/usr/bin/env node
// The `kleinserve` command. The package ships its TypeScript sources and runs them through tsx (a runtime
// dependency), so what is installed is exactly what is tested; there is no compiled copy to drift from them.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli.ts');
await main(process.argv.slice(2));
