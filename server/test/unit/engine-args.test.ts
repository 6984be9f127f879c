// What the operator's settings become on the engine's command line: every role that starts an engine (serve,
// worker) builds it with engineArgs(config), so the mapping is checked here once, flag by flag.
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { engineArgs, loraArgs } from '../../src/engine/supervisor.ts';

/** The value that follows `flag` in an argument list (undefined when the flag is absent). */
const after = (args: string[], flag: string) => {
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
};

/** A config from flags (by their long names, as the CLI hands them over) and environment. */
const serveConfig = (flags: string[], env: Record<string, string> = {}) => {
  const values: Record<string, string> = { data: '/tmp/ks-args' };
  for (let i = 0; i < flags.length; i += 2) values[flags[i].slice(2)] = flags[i + 1];
  return loadConfig(values, env);
};

describe('engine LoRA limits', () => {
  it("pass the engine's defaults when nothing is set, and keep the server's disk cache off the engine's line", () => {
    const cfg = serveConfig([]);
    expect([cfg.loraMaxRank, cfg.loraMaxMb, cfg.loraHostCacheMb, cfg.loraGpuCacheMb, cfg.loraCacheMb]).toEqual([128, 1024, 2048, 1024, 4096]);
    const args = engineArgs(cfg);
    expect(after(args, '--lora-max-rank')).toBe('128');
    expect(after(args, '--lora-max-mb')).toBe('1024');
    expect(after(args, '--lora-cache-mb')).toBe('2048');
    expect(after(args, '--lora-gpu-cache-mb')).toBe('1024');
    expect(args).not.toContain('4096');
  });

  it('map flags to the engine’s own names, the host cache to its --lora-cache-mb', () => {
    const cfg = serveConfig(['--lora-max-rank', '4', '--lora-max-mb', '3', '--lora-host-cache-mb', '0', '--lora-gpu-cache-mb', '16', '--lora-cache-mb', '99']);
    expect(loraArgs(cfg)).toEqual(['--lora-max-rank', '4', '--lora-max-mb', '3', '--lora-cache-mb', '0', '--lora-gpu-cache-mb', '16']);
    expect(cfg.loraCacheMb).toBe(99);
    expect(engineArgs(cfg)).toEqual(expect.arrayContaining(['--data-dir', '/tmp/ks-args', '--lora-max-rank', '4']));
  });

  it('read the environment, flags winning', () => {
    const env = { KLEINSERVE_LORA_MAX_RANK: '8', KLEINSERVE_LORA_HOST_CACHE_MB: '64', KLEINSERVE_LORA_GPU_CACHE_MB: '32' };
    expect(loraArgs(serveConfig([], env))).toEqual(['--lora-max-rank', '8', '--lora-max-mb', '1024', '--lora-cache-mb', '64', '--lora-gpu-cache-mb', '32']);
    expect(after(loraArgs(serveConfig(['--lora-max-rank', '16'], env)), '--lora-max-rank')).toBe('16');
  });

  it('refuse values the engine could not take, naming the setting', () => {
    expect(() => serveConfig(['--lora-max-rank', '0'])).toThrow(/loraMaxRank/);
    expect(() => serveConfig(['--lora-max-rank', '2.5'])).toThrow(/loraMaxRank/);
    expect(() => serveConfig(['--lora-host-cache-mb', '-1'])).toThrow(/loraHostCacheMb/);
    expect(() => serveConfig([], { KLEINSERVE_LORA_GPU_CACHE_MB: 'lots' })).toThrow(/loraGpuCacheMb/);
  });

  it('leave out what the config does not set (a config built in code)', () => {
    expect(loraArgs({})).toEqual([]);
    expect(loraArgs({ loraMaxRank: 32 })).toEqual(['--lora-max-rank', '32']);
  });
});
