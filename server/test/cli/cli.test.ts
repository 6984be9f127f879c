// The `kleinserve` command explains itself: --help on every subcommand lists each option with its default and
// environment variable (the defaults shown are the ones the config loader applies), --version works, usage errors
// exit 64, and failures are worded so a person knows what to change.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { KleinserveError } from '@kleinserve/sdk';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { buildProgram, dropFalseBooleanEnv, VERSION } from '../../src/cli.ts';
import { describeFailure } from '../../src/cli-edit/command.ts';
import { ConfigSchema } from '../../src/config.ts';

const BIN = path.resolve(import.meta.dirname, '../../bin/kleinserve.mjs');
const PKG = JSON.parse(fs.readFileSync(path.resolve(import.meta.dirname, '../../package.json'), 'utf8'));

async function kleinserve(args: string[], env: Record<string, string> = {}) {
  const clean = { ...process.env, ...env };
  delete clean.KLEINSERVE_API_KEY;
  delete clean.KLEINSERVE_API_KEYS;
  Object.assign(clean, env);
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args], { env: clean });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('kleinserve --help and --version', () => {
  it('prints the package version', async () => {
    const { code, stdout } = await kleinserve(['--version']);
    expect(code).toBe(0);
    expect(stdout.trim()).toBe(PKG.version);
    expect(VERSION).toBe(PKG.version);
  });

  it('answers --help on a subcommand (through the real bin) and exits 0', async () => {
    const { code, stdout } = await kleinserve(['serve', '--help']);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^Usage: kleinserve serve \[options\]/);
    expect(stdout).toContain('--api-key <key>');
    expect(stdout).toContain('KLEINSERVE_API_KEYS');
  });

  it('lists every option of every subcommand with its environment variable and default', () => {
    const program = buildProgram();
    const top = program.helpInformation();
    for (const cmd of program.commands) expect(top).toContain(cmd.name());
    const all = (c: Command): Command[] => c.commands.flatMap((sub) => [sub, ...all(sub)]);
    for (const cmd of all(program)) {
      if (cmd.name() === 'help') continue;
      const help = cmd.helpInformation().replace(/\s+/g, ' ');
      for (const option of cmd.options) {
        if ((option as { hidden?: boolean }).hidden) continue;
        expect(help, `${cmd.name()} ${option.long}`).toContain(option.flags);
        if (option.envVar) expect(help, `${cmd.name()} ${option.long}`).toContain(`env: ${option.envVar}`);
        // A boolean flag is off unless given; every other option says what applies without it.
        if (!option.isBoolean() && (option.defaultValue !== undefined || option.defaultValueDescription)) {
          expect(help, `${cmd.name()} ${option.long}`).toMatch(new RegExp(`${option.flags.replace(/[[\]|<>.-]/g, '\\$&')}.*default: `));
        }
      }
    }
  });

  it('shows the defaults the server applies, not a copy that can drift', () => {
    const applied = ConfigSchema.parse({ dataDir: '/x' });
    const serve = buildProgram().commands.find((c) => c.name() === 'serve')!;
    const shown = Object.fromEntries(serve.options.map((o) => [o.long, o.defaultValue]));
    expect(shown['--model']).toBe(applied.model);
    expect(shown['--host']).toBe(applied.host);
    expect(Number(shown['--port'])).toBe(applied.port);
    expect(Number(shown['--concurrency'])).toBe(applied.concurrency);
    expect(Number(shown['--lora-max-rank'])).toBe(applied.loraMaxRank);
    expect(Number(shown['--lora-max-mb'])).toBe(applied.loraMaxMb);
    expect(Number(shown['--lora-host-cache-mb'])).toBe(applied.loraHostCacheMb);
    expect(Number(shown['--lora-gpu-cache-mb'])).toBe(applied.loraGpuCacheMb);
    expect(Number(shown['--lora-cache-mb'])).toBe(applied.loraCacheMb);
  });

  it('keeps the server keys (plural) and the client key (singular) apart in help', () => {
    const program = buildProgram();
    const flag = (cmd: string) => program.commands.find((c) => c.name() === cmd)!.options.find((o) => o.long === '--api-key')!;
    expect(flag('serve').envVar).toBe('KLEINSERVE_API_KEYS');
    expect(flag('api').envVar).toBe('KLEINSERVE_API_KEYS');
    expect(flag('edit').envVar).toBe('KLEINSERVE_API_KEY');
    expect(flag('serve').description).toMatch(/SERVER/);
    expect(flag('edit').description).toMatch(/CLIENT/);
  });

  it('reads a false-looking value of an on/off variable as off, and any other value as on', () => {
    const env: NodeJS.ProcessEnv = { KLEINSERVE_DETERMINISTIC: '0', KLEINSERVE_ALLOW_SAFETY_OPT_OUT: 'false', KLEINSERVE_HOST: '0' };
    dropFalseBooleanEnv(buildProgram(), env);
    expect(env).toEqual({ KLEINSERVE_HOST: '0' });
    const on: NodeJS.ProcessEnv = { KLEINSERVE_DETERMINISTIC: '1', KLEINSERVE_ALLOW_SAFETY_OPT_OUT: 'yes' };
    dropFalseBooleanEnv(buildProgram(), on);
    expect(on).toEqual({ KLEINSERVE_DETERMINISTIC: '1', KLEINSERVE_ALLOW_SAFETY_OPT_OUT: 'yes' });
  });

  it('refuses an unknown option or command with exit 64 and a pointer to --help', async () => {
    const bad = await kleinserve(['serve', '--modle', 'tiny']);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain("unknown option '--modle'");
    expect(bad.stderr).toContain('--help');
    const none = await kleinserve(['srve']);
    expect(none.code).toBe(64);
    expect(none.stderr).toContain("unknown command 'srve'");
  });
});

describe('kleinserve edit errors', () => {
  it('says a missing file does not exist, with its full path, before contacting any server', async () => {
    const { code, stderr } = await kleinserve(['edit', '--server', 'http://127.0.0.1:9', '--api-key', 'k', '--image', 'no/such/photo.jpg', '--prompt', 'p', '-o', 'out.jpg']);
    expect(code).toBe(1);
    expect(stderr.trim()).toBe(`kleinserve: --image no/such/photo.jpg: no such file (${path.resolve('no/such/photo.jpg')})`);
  });

  it('names the flag and the variable to set when the server wants a key', () => {
    const missing = describeFailure(new KleinserveError(401, 'UNAUTHORIZED', 'missing or invalid API key; send Authorization: Bearer <key>'), null);
    expect(missing).toBe('the server needs an API key: pass --api-key KEY or set KLEINSERVE_API_KEY');
    const refused = describeFailure(new KleinserveError(401, 'UNAUTHORIZED', 'x'), 'KLEINSERVE_API_KEY');
    expect(refused).toContain('refused the API key given by KLEINSERVE_API_KEY');
  });

  it('prints a 422 once, each field with its reason', () => {
    const errors = [{ field: 'input.steps', reason: 'must be at most 50' }, { field: 'input.colour', reason: 'unknown field' }];
    const err = new KleinserveError(422, 'INPUT_VALIDATION_FAILED', errors.map((e) => `${e.field}: ${e.reason}`).join('; '), errors);
    const text = describeFailure(err, '--api-key');
    expect(text).toBe('the server refused the request (422 INPUT_VALIDATION_FAILED):\n  input.steps: must be at most 50\n  input.colour: unknown field');
  });
});
