"""LoRA under torch.compile (aot_eager: dynamo capture and AOT tracing without codegen, as test_fastpath does)."""

import numpy as np
import pytest
import torch

from conftest import make_job
from kleinserve_engine.fastpath import FastPathOptions, compiled_graphs
from kleinserve_engine.lora.spec import LoraSpec
from kleinserve_engine.pipeline import Engine, EngineOptions
from lora_factory import random_lora, write


def test_a_compiled_engine_hooks_every_linear_before_its_first_call(tiny_dir):
    from kleinserve_engine.loading import load

    # dynamo does not guard on hooks added after a graph was compiled: they must all exist before the first call
    model = load(str(tiny_dir), device="cpu")
    before = {n: len(m._forward_hooks) for n, m in model.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    engine = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", compile=True, compile_backend="aot_eager")))
    after = {n: len(m._forward_hooks) for n, m in model.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(after) == set(engine.adapters.shapes)
    assert all(after[n] == before[n] + 1 for n in after)


@pytest.mark.slow
def test_compiled_lora_equals_eager_and_switching_adapters_compiles_nothing(tiny_dir, tmp_path):
    from kleinserve_engine.loading import load

    model = load(str(tiny_dir), device="cpu")  # its own copy: the compiled engine's hooks stay on its modules
    eager = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu")))
    compiled = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", compile=True, compile_backend="aot_eager")))
    a = write(random_lora(model.transformer, rank=4, seed=1), "kohya", tmp_path / "a.safetensors")
    b = write(random_lora(model.transformer, rank=4, seed=2), "diffusers", tmp_path / "b.safetensors")

    def pixels(engine, loras_per_row):
        jobs = []
        for i, paths in enumerate(loras_per_row):
            j = make_job(seeds=[i], size=(64, 64), steps=2)
            j.loras = engine.adapters.resolve([LoraSpec(str(p), None, 1.0) for p in paths])
            jobs.append(j)
        return [r.pixels[0].astype(int) for r in engine.run_batch(jobs)]

    def worst(rows):
        return max(int(np.abs(x - y).max()) for x, y in zip(pixels(eager, rows), pixels(compiled, rows)))

    assert worst([[]]) == 0  # compiles the graph without adapters first: the case a late hook would miss
    assert worst([[a]]) <= 1
    graphs = compiled_graphs()
    assert worst([[b]]) <= 1 and worst([[a]]) <= 1 and worst([[]]) == 0
    assert compiled_graphs() == graphs, "switching between adapters of one shape must not recompile"
    assert worst([[a], [], [b]]) <= 1  # per-row path, batch of 3
    graphs = compiled_graphs()
    assert worst([[b], [a], []]) <= 1
    assert compiled_graphs() == graphs
