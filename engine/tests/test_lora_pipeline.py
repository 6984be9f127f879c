"""LoRA on the engine's own loop (tiny model): parity with diffusers per layout, mixed batches, no-LoRA unchanged."""

import numpy as np
import pytest
import torch

from conftest import make_job, random_image
from kleinserve_engine.lora.spec import LoraSpec
from kleinserve_engine.pipeline import JobResult
from lora_factory import random_lora, write

SIZE = (64, 64)
STEPS = 2


def run(engine, jobs):
    out = engine.run_batch(jobs)
    assert all(isinstance(r, JobResult) for r in out), out
    return out


def job(engine, loras=(), refs=(), **kw):
    j = make_job(list(refs), size=SIZE if not refs else None, steps=STEPS, output_format="png", **kw)
    j.loras = engine.adapters.resolve([LoraSpec(str(p), None, s) for p, s in loras])
    return j


def max_diff(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.fixture(scope="module")
def adapters(engine, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    a = random_lora(engine.model.transformer, rank=4, alpha=2.0, seed=11)
    b = random_lora(engine.model.transformer, rank=8, alpha=None, seed=12,
                    modules={"double_blocks.0.img_attn.qkv", "single_blocks.1.linear1", "single_blocks.0.linear2"})
    c = random_lora(engine.model.transformer, rank=2, alpha=None, seed=13)
    return {"a": write(a, "kohya", d / "a.safetensors"), "b": write(b, "diffusers", d / "b.safetensors"),
            "c": write(c, "ai-toolkit-bfl", d / "c.safetensors"), "lora_a": a, "dir": d}


@pytest.fixture(scope="module")
def reference_pipeline(tiny_dir):
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline.from_pretrained(str(tiny_dir)).to("cpu")


# the layouts diffusers' Flux2 loader reads (it takes no `.alpha` keys in ai-toolkit files, and under the
# diffusion_model. prefix only block modules in diffusers names; bare BFL names it does not read at all:
# test_lora_formats checks that those convert exactly like the prefixed ones)
PARITY = {"diffusers": 2.0, "kohya": 3.0, "ai-toolkit-bfl": None, "ai-toolkit-diffusers": None}
BLOCKS_ONLY = {"ai-toolkit-diffusers"}


@pytest.mark.parametrize("layout", list(PARITY))
def test_matches_diffusers_load_lora_weights(engine, reference_pipeline, tmp_path, layout):
    modules = None
    if layout in BLOCKS_ONLY:
        from lora_factory import BFL_TARGETS

        modules = {m for m in BFL_TARGETS if m.startswith(("double_blocks", "single_blocks"))}
    lora = random_lora(engine.model.transformer, rank=4, alpha=PARITY[layout], seed=21, modules=modules)
    path = write(lora, layout, tmp_path / f"{layout}.safetensors")
    scale = 0.7
    refs = [random_image(80, 64, seed=3)]
    ours = run(engine, [job(engine, [(path, scale)], refs, prompt="a lora portrait", seeds=[5])])[0].pixels[0]
    base = run(engine, [job(engine, [], refs, prompt="a lora portrait", seeds=[5])])[0].pixels[0]

    pipe = reference_pipeline
    pipe.load_lora_weights(str(path), adapter_name="under_test")
    try:
        pipe.set_adapters(["under_test"], [scale])
        processed = job(engine, [], refs).refs
        theirs = pipe(image=[r.image for r in processed], prompt="a lora portrait", height=processed[0].size[1],
                      width=processed[0].size[0], num_inference_steps=STEPS, guidance_scale=1.0,
                      generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    finally:
        pipe.delete_adapters("under_test")
    theirs = (theirs * 255).round().astype(np.uint8)
    diff, effect = max_diff(ours, theirs), max_diff(ours, base)
    print(f"lora parity {layout}: max abs pixel diff {diff}/255 (the adapter itself moves pixels by up to {effect})")
    assert effect > 20, "the adapter must change the image, or parity proves nothing"
    assert diff <= 1


def test_mixed_batch_equals_each_request_alone(engine, adapters):
    a, b, c = adapters["a"], adapters["b"], adapters["c"]
    refs = [random_image(64, 80, seed=7)]
    specs = [
        dict(loras=[(a, 1.0)], prompt="one", seeds=[1]),
        dict(loras=[], prompt="two", seeds=[2]),
        dict(loras=[(b, 0.5), (c, -1.0)], prompt="three", seeds=[3, 4]),
    ]
    batched = run(engine, [job(engine, s["loras"], refs, prompt=s["prompt"], seeds=s["seeds"]) for s in specs])
    assert all(r.batch_size == 4 for r in batched)
    worst = 0
    for s, got in zip(specs, batched):
        alone = run(engine, [job(engine, s["loras"], refs, prompt=s["prompt"], seeds=s["seeds"])])[0]
        for x, y in zip(got.pixels, alone.pixels):
            worst = max(worst, max_diff(x, y))
    print(f"mixed LoRA batch vs alone: max abs pixel diff {worst}/255")
    assert worst <= 1
    # the row without an adapter is exactly what the same batch gives when nobody has one
    plain = run(engine, [job(engine, [], refs, prompt=s["prompt"], seeds=s["seeds"]) for s in specs])
    assert np.array_equal(plain[1].pixels[0], batched[1].pixels[0])
    assert not np.array_equal(plain[0].pixels[0], batched[0].pixels[0])


def test_same_adapter_everywhere_uses_shared_weights_and_matches_per_row(engine, adapters):
    a = adapters["a"]
    refs = [random_image(64, 64, seed=8)]
    shared = run(engine, [job(engine, [(a, 0.8)], refs, prompt=p, seeds=[s]) for p, s in (("x", 1), ("y", 2))])
    # the same two requests next to a row without an adapter take the per-row path
    per_row = run(engine, [job(engine, [(a, 0.8)], refs, prompt=p, seeds=[s]) for p, s in (("x", 1), ("y", 2))]
                  + [job(engine, [], refs, prompt="z", seeds=[3])])
    worst = max(max_diff(x.pixels[0], y.pixels[0]) for x, y in zip(shared, per_row))
    print(f"shared-weight vs per-row path: max abs pixel diff {worst}/255")
    assert worst <= 1


def test_without_lora_nothing_changes(engine, adapters):
    refs = [random_image(96, 64, seed=9)]
    hooks = lambda: sum(len(m._forward_hooks) for m in engine.model.transformer.modules())  # noqa: E731
    before, n_hooks = run(engine, [job(engine, [], refs, prompt="untouched", seeds=[4])])[0], hooks()
    run(engine, [job(engine, [(adapters["a"], 1.0)], refs, prompt="untouched", seeds=[4])])
    after = run(engine, [job(engine, [], refs, prompt="untouched", seeds=[4])])[0]
    assert before.images[0] == after.images[0]
    assert hooks() == n_hooks, "an eager engine's LoRA hooks live only as long as their batch"


def test_scale_zero_equals_no_lora_and_scale_matters(engine, adapters):
    refs = [random_image(64, 64, seed=10)]
    none = run(engine, [job(engine, [], refs, seeds=[6])])[0].pixels[0]
    zero = run(engine, [job(engine, [(adapters["a"], 0.0)], refs, seeds=[6])])[0].pixels[0]
    half = run(engine, [job(engine, [(adapters["a"], 0.5)], refs, seeds=[6])])[0].pixels[0]
    full = run(engine, [job(engine, [(adapters["a"], 1.0)], refs, seeds=[6])])[0].pixels[0]
    assert max_diff(none, zero) == 0
    assert max_diff(half, full) > 0 and max_diff(none, half) > 0


def test_cancel_mid_batch_keeps_the_other_rows_adapters(engine, adapters):
    refs = [random_image(64, 64, seed=12)]
    plan = [("a", "stay", 1), ("c", "leave", 2), ("b", "stay too", 3)]
    jobs = [job(engine, [(adapters[name], 1.0)], refs, prompt=prompt, seeds=[seed]) for name, prompt, seed in plan]

    def cancel_second(info):
        if info["step"] == 1:
            jobs[1].canceled = True

    jobs[0].on_progress = cancel_second
    out = engine.run_batch(jobs)
    assert type(out[1]).__name__ == "Canceled"
    for k in (0, 2):
        name, prompt, seed = plan[k]
        alone = run(engine, [job(engine, [(adapters[name], 1.0)], refs, prompt=prompt, seeds=[seed])])[0]
        assert max_diff(out[k].pixels[0], alone.pixels[0]) <= 1


def test_adapter_cache_by_content_hash(engine, adapters, tmp_path):
    import shutil

    store = engine.adapters
    store.clear()
    m = store.metrics
    hits0, misses0 = m.hits.labels("host")._value.get(), m.misses.labels("host")._value.get()
    first = store.adapter(LoraSpec(str(adapters["a"]), None, 1.0), 0)
    again = store.adapter(LoraSpec(str(adapters["a"]), None, 1.0), 0)  # by (path, size, mtime): no re-read
    copy = shutil.copy(adapters["a"], tmp_path / "same-bytes.safetensors")
    by_hash = store.adapter(LoraSpec(str(copy), first.sha256, 1.0), 0)  # named by hash: found without reading
    assert first is again is by_hash
    assert m.misses.labels("host")._value.get() - misses0 == 1
    assert m.hits.labels("host")._value.get() - hits0 == 2
    assert m.bytes.labels("host")._value.get() == first.nbytes
    assert m.load_seconds.labels("file")._sum.get() > 0
    text = engine.metrics.render().decode()
    assert 'kleinserve_engine_lora_cache_hits_total{tier="host"}' in text


def test_host_cache_is_bounded_in_bytes(engine, tmp_path):
    from kleinserve_engine.lora.store import AdapterStore, LoraOptions

    paths = [write(random_lora(engine.model.transformer, rank=4, seed=30 + i), "diffusers", tmp_path / f"{i}.safetensors")
             for i in range(3)]
    one = AdapterStore(engine.model.transformer, torch.float32, torch.device("cpu")).adapter(LoraSpec(str(paths[0]), None, 1), 0)
    store = AdapterStore(engine.model.transformer, torch.float32, torch.device("cpu"),
                         LoraOptions(host_cache_mb=2.5 * one.nbytes / (1 << 20)))
    for p in paths:
        store.adapter(LoraSpec(str(p), None, 1.0), 0)
    assert len(store.host) == 2 and store.host.bytes <= 2.5 * one.nbytes
    assert store.metrics.evictions.labels("host")._value.get() == 1
    assert one.sha256 not in store.host  # least recently used went first


def test_base_checkpoint_guided_rows_apply_their_adapter_to_both_passes(base_engine, tiny_base_dir, tmp_path):
    """Guidance appends unconditional rows to the transformer call: each must use its own request's adapters."""
    from diffusers import Flux2KleinPipeline

    t = base_engine.model.transformer
    a = write(random_lora(t, rank=4, alpha=4.0, seed=41), "kohya", tmp_path / "a.safetensors")
    b = write(random_lora(t, rank=2, seed=42), "diffusers", tmp_path / "b.safetensors")
    refs = [random_image(64, 64, seed=14)]
    specs = [dict(loras=[(a, 0.9)], prompt="guided a", seeds=[1], guidance=3.0),
             dict(loras=[(b, 1.0)], prompt="plain b", seeds=[2], guidance=1.0),
             dict(loras=[], prompt="guided none", seeds=[3], guidance=4.0),
             dict(loras=[(b, -0.5)], prompt="guided b", seeds=[4], guidance=2.0)]
    batched = run(base_engine, [job(base_engine, **s, refs=refs) for s in specs])
    worst = 0
    for s, got in zip(specs, batched):
        alone = run(base_engine, [job(base_engine, **s, refs=refs)])[0]
        worst = max(worst, max_diff(got.pixels[0], alone.pixels[0]))
    print(f"guided mixed LoRA batch vs alone: max abs pixel diff {worst}/255")
    assert worst <= 1

    pipe = Flux2KleinPipeline.from_pretrained(str(tiny_base_dir)).to("cpu")
    pipe.load_lora_weights(str(a), adapter_name="a")
    pipe.set_adapters(["a"], [0.9])
    processed = job(base_engine, [], refs).refs
    theirs = pipe(image=[r.image for r in processed], prompt="guided a", height=64, width=64, num_inference_steps=STEPS,
                  guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(1), output_type="np").images[0]
    diff = max_diff(batched[0].pixels[0], (theirs * 255).round().astype(np.uint8))
    print(f"guided LoRA parity with Flux2KleinPipeline: max abs pixel diff {diff}/255")
    assert diff <= 1


def test_device_tier_is_bounded_and_counted(engine, tmp_path):
    """The GPU tier's logic on the meta device (no GPU here): copies cached by hash, bounded in bytes, evicted LRU."""
    from kleinserve_engine.lora.store import AdapterStore, LoraOptions

    paths = [write(random_lora(engine.model.transformer, rank=4, seed=50 + i), "bfl", tmp_path / f"{i}.safetensors")
             for i in range(3)]
    probe = AdapterStore(engine.model.transformer, torch.float32, torch.device("cpu")).adapter(LoraSpec(str(paths[0]), None, 1), 0)
    store = AdapterStore(engine.model.transformer, torch.float32, torch.device("meta"),
                         LoraOptions(device_cache_mb=2.5 * probe.nbytes / (1 << 20)))
    adapters = [store.adapter(LoraSpec(str(p), None, 1.0), 0) for p in paths]
    first = store.on_model_device(adapters[0])
    assert all(d.up.device.type == "meta" for d in first.values())
    # a fused qkv's shared down matrix stays one tensor on the device too
    assert first["transformer_blocks.0.attn.to_q"].down is first["transformer_blocks.0.attn.to_v"].down
    assert store.on_model_device(adapters[0]) is first
    store.on_model_device(adapters[1])
    store.on_model_device(adapters[2])
    m = store.metrics
    assert m.hits.labels("device")._value.get() == 1 and m.misses.labels("device")._value.get() == 3
    assert m.evictions.labels("device")._value.get() == 1 and len(store.dev) == 2
    assert m.bytes.labels("device")._value.get() == store.dev.bytes <= 2.5 * probe.nbytes
    counts = [s.value for metric in m.load_seconds.collect() for s in metric.samples
              if s.name.endswith("_count") and s.labels.get("stage") == "device"]
    assert counts == [3]


def test_lora_warm_up_runs_both_lora_paths_and_leaves_nothing_behind(engine):
    from kleinserve_engine.lora.warmup import warm_lora, zero_adapter

    refs = [random_image(64, 64, seed=15)]
    plain = run(engine, [job(engine, [], refs, prompt="zero", seeds=[8])])[0]
    zero = job(engine, [], refs, prompt="zero", seeds=[8])
    zero.loras = [(zero_adapter(engine.adapters, rank=4), 1.0)]
    assert run(engine, [zero])[0].images[0] == plain.images[0]  # an all-zero adapter adds exact zeros
    calls = []
    real = engine.run_batch
    engine.run_batch = lambda jobs: calls.append([bool(j.loras) for j in jobs]) or real(jobs)
    try:
        warm_lora(engine, 64, 64, job(engine, [], refs).refs, steps=1)
    finally:
        engine.run_batch = real
    assert calls == [[True], [True], [True, False], [True, False]]
    assert len(engine.adapters.host) == 0 and engine.lora._plan is None


def test_engine_warm_up_includes_the_lora_graphs_when_compiled(engine, monkeypatch):
    from kleinserve_engine.warmup import warm

    calls = []
    real = engine.run_batch
    monkeypatch.setattr(engine, "run_batch", lambda jobs: calls.append([bool(j.loras) for j in jobs]) or real(jobs))
    # the eager denoiser posing as a compiled one: what warm() decides is under test, not the compile
    monkeypatch.setattr(engine.denoiser, "compiled", True)
    warm(engine, [(64, 64, 1, 1)], steps=1)
    assert [True] in calls and [True, False] in calls
    assert calls[0] == [False]  # the buckets first, without adapters
