// What `--model` means: PUBLIC=CHECKPOINT, a bare checkpoint (a family repo id serves its own model, anything else
// flux-2-klein-4b, as before), refusals naming the flag; and the engines' metrics merged with a model label.
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.ts';
import { mergeExpositions } from '../../src/engine/model-engines.ts';
import { parseServedModels } from '../../src/models/served.ts';

describe('--model', () => {
  it('maps a bare checkpoint as before, and a family repo id to its own model', () => {
    expect(parseServedModels(['tiny'])).toEqual([{ id: 'black-forest-labs/flux-2-klein-4b', checkpoint: 'tiny' }]);
    expect(parseServedModels(['/models/anything'])[0].id).toBe('black-forest-labs/flux-2-klein-4b');
    expect(parseServedModels(['black-forest-labs/FLUX.2-klein-base-9B'])[0].id).toBe('black-forest-labs/flux-2-klein-base-9b');
  });

  it('takes PUBLIC=CHECKPOINT with the short or full public id', () => {
    expect(parseServedModels(['flux-2-klein-base-4b=tiny-base', 'black-forest-labs/flux-2-klein-9b=/m/9b'])).toEqual([
      { id: 'black-forest-labs/flux-2-klein-base-4b', checkpoint: 'tiny-base' },
      { id: 'black-forest-labs/flux-2-klein-9b', checkpoint: '/m/9b' },
    ]);
  });

  it('refuses an unknown public id and an empty checkpoint, naming what to do', () => {
    expect(() => parseServedModels(['flux-3=tiny'])).toThrow(/"flux-3" is not a FLUX.2 \[klein\] model \(one of: flux-2-klein-4b, /);
    expect(() => parseServedModels(['flux-2-klein-9b='])).toThrow(/give the checkpoint after "="/);
  });

  it('lets a later --model for the same model replace the earlier one, as a repeated flag always did', () => {
    expect(parseServedModels(['tiny', '/m/4b'])).toEqual([{ id: 'black-forest-labs/flux-2-klein-4b', checkpoint: '/m/4b' }]);
    expect(parseServedModels(['tiny', 'flux-2-klein-9b=/m/9b', 'flux-2-klein-4b=/m/4b']).map((m) => m.checkpoint)).toEqual(['/m/4b', '/m/9b']);
  });

  it('reads repeated flags and the comma-separated variable; one flag keeps the old single-model config', () => {
    const flags = loadConfig({ data: '/x', model: ['tiny', 'flux-2-klein-base-4b=tiny-base'] }, {});
    expect(flags.model).toBe('tiny');
    expect(flags.models?.map((m) => m.id)).toEqual(['black-forest-labs/flux-2-klein-4b', 'black-forest-labs/flux-2-klein-base-4b']);
    const env = loadConfig({ data: '/x' }, { KLEINSERVE_MODEL: 'tiny, flux-2-klein-9b=/m/9b' });
    expect(env.models?.map((m) => m.checkpoint)).toEqual(['tiny', '/m/9b']);
    expect(loadConfig({ data: '/x', model: '/m/4b' }, {}).models).toEqual([{ id: 'black-forest-labs/flux-2-klein-4b', checkpoint: '/m/4b' }]);
    expect(() => loadConfig({ data: '/x', model: ['tiny', 'flux-3=tiny'] }, {})).toThrow(/invalid configuration:\n {2}model: --model "flux-3=tiny": /);
  });
});

describe('engine metrics of several models', () => {
  it('labels every sample with its model and keeps one HELP/TYPE per family', () => {
    const text = (n: number) =>
      [
        '# HELP kleinserve_engine_requests_total generate requests by outcome',
        '# TYPE kleinserve_engine_requests_total counter',
        `kleinserve_engine_requests_total{outcome="ok"} ${n}`,
        '# HELP kleinserve_engine_queue_depth queued',
        '# TYPE kleinserve_engine_queue_depth gauge',
        `kleinserve_engine_queue_depth ${n}`,
      ].join('\n');
    const merged = mergeExpositions([['a/x', text(1)], ['a/y', text(2)]]).split('\n');
    expect(merged.filter((l) => l.startsWith('# HELP'))).toHaveLength(2);
    expect(merged).toContain('kleinserve_engine_requests_total{model="a/x",outcome="ok"} 1');
    expect(merged).toContain('kleinserve_engine_requests_total{model="a/y",outcome="ok"} 2');
    expect(merged).toContain('kleinserve_engine_queue_depth{model="a/y"} 2');
    // Each family's samples follow its own HELP/TYPE.
    expect(merged.indexOf('kleinserve_engine_queue_depth{model="a/x"} 1')).toBeGreaterThan(merged.indexOf('# TYPE kleinserve_engine_queue_depth gauge'));
  });
});
