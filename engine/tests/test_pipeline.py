"""The engine's own loop on the tiny model: determinism, batching equivalence, caches, isolation, shapes."""

import numpy as np
import pytest

from conftest import make_job, random_image
from kleinserve_engine.errors import Canceled, OutOfMemory
from kleinserve_engine.pipeline import JobResult


def run1(engine, job) -> JobResult:
    res = engine.run_batch([job])[0]
    assert isinstance(res, JobResult), res
    return res


def test_same_seed_gives_byte_identical_output(engine):
    refs = [random_image(96, 80, 1)]
    a = run1(engine, make_job(refs, seeds=[42], output_format="jpeg"))
    engine.prompt_cache.clear()
    engine.ref_cache.clear()
    b = run1(engine, make_job(refs, seeds=[42], output_format="jpeg"))
    c = run1(engine, make_job(refs, seeds=[43], output_format="jpeg"))
    assert a.images[0] == b.images[0]
    assert a.images[0] != c.images[0]


def test_batched_equals_alone_with_own_seeds_and_prompts(engine):
    ref_sets = [[random_image(112, 80, 10 + i), random_image(64, 96, 20 + i)] for i in range(3)]
    prompts = ["a cat", "a dog wearing a hat", "watercolour"]
    seeds = [[1], [2, 3], [4]]
    jobs = [make_job(r, prompt=p, seeds=s, output_format="png") for r, p, s in zip(ref_sets, prompts, seeds)]
    assert len({j.batch_key() for j in jobs}) == 1
    batched = engine.run_batch(jobs)
    assert all(isinstance(r, JobResult) and r.batch_size == 4 for r in batched)
    worst = 0
    for r, p, s in zip(ref_sets, prompts, seeds):
        alone = run1(engine, make_job(r, prompt=p, seeds=s, output_format="png"))
        assert alone.batch_size == len(s)
        for got, ref in zip(batched[prompts.index(p)].pixels, alone.pixels):
            worst = max(worst, int(np.abs(got.astype(int) - ref.astype(int)).max()))
    print(f"batched vs alone: max abs pixel diff {worst}/255")
    assert worst <= 1
    # distinct seeds and prompts really give distinct images (no row mix-up would go unnoticed)
    flat = [p for r in batched for p in r.pixels]
    assert len({x.tobytes() for x in flat}) == 4


def test_caches_hit_and_cached_equals_uncached(engine):
    engine.prompt_cache.clear()
    engine.ref_cache.clear()
    refs = [random_image(64, 64, 5), random_image(96, 64, 6)]
    first = run1(engine, make_job(refs, prompt="cache me", seeds=[9], output_format="png"))
    assert first.cache == {"prompt": "miss", "refs": ["miss", "miss"]}
    second = run1(engine, make_job([], prompt="cache me", seeds=[9], size=(64, 64), output_format="png"))
    assert second.cache["prompt"] == "hit"
    third = run1(engine, make_job(refs, prompt="cache me", seeds=[9], output_format="png"))
    assert third.cache == {"prompt": "hit", "refs": ["hit", "hit"]}
    assert third.images[0] == first.images[0]
    assert engine.prompt_cache.hits >= 2 and engine.ref_cache.hits >= 2


def test_cache_is_bounded_in_bytes(model):
    from kleinserve_engine.pipeline import Engine, EngineOptions

    # one tiny-model prompt embedding is 512 x 96 float32 = 192 KiB; allow two of them
    eng = Engine(model, EngineOptions(prompt_cache_mb=0.4, ref_cache_mb=0.4))
    for p in ("one", "two", "three"):
        eng.prompt_embeddings([p])
    assert len(eng.prompt_cache) == 2 and "one" not in eng.prompt_cache
    assert eng.prompt_cache.bytes <= 0.4 * 1024 * 1024
    assert eng.prompt_cache.evictions == 1


def test_text_to_image_shapes_and_no_nans(engine):
    res = run1(engine, make_job([], seeds=[1, 2], size=(96, 64), output_format="png"))
    assert [p.shape for p in res.pixels] == [(64, 96, 3)] * 2
    assert res.seeds == [1, 2]
    import torch
    from kleinserve_engine import latents as L

    x = torch.randn(1, 6 * 4, 128)
    assert torch.equal(L.pack(L.unpack(x, 6, 4)), x)
    y = torch.randn(2, 32, 12, 8)
    assert torch.equal(L.unpatchify(L.patchify(y)), y)


def test_denoiser_output_has_no_nans(engine):
    import torch

    job = make_job([random_image(64, 64, 3)], seeds=[3])
    seen = []
    real = engine.denoiser

    def spy(*args):
        out = real(*args)
        seen.append(bool(torch.isfinite(out).all()))
        return out

    engine.denoiser = spy
    try:
        run1(engine, job)
    finally:
        engine.denoiser = real
    assert seen == [True] * 4


def test_reference_position_ids():
    from kleinserve_engine import latents as L

    ids = L.reference_ids([(2, 3), (1, 2)])
    assert ids.shape == (8, 4)
    assert ids[:6, 0].unique().tolist() == [10] and ids[6:, 0].unique().tolist() == [20]
    assert L.output_ids(2, 2)[:, 0].unique().tolist() == [0]
    assert L.text_ids(5)[:, 3].tolist() == [0, 1, 2, 3, 4]


def test_oom_fails_alone_in_a_batch(model):
    from kleinserve_engine.pipeline import Engine, EngineOptions

    eng = Engine(model, EngineOptions(oom_prompt="explode"))
    jobs = [make_job([], prompt=p, seeds=[1], size=(64, 64)) for p in ("fine", "explode", "also fine")]
    res = eng.run_batch(jobs)
    assert isinstance(res[1], OutOfMemory)
    assert isinstance(res[0], JobResult) and isinstance(res[2], JobResult)
    assert isinstance(eng.run_batch([make_job([], prompt="after", seeds=[1], size=(64, 64))])[0], JobResult)


def test_cancel_stops_at_step_boundary(engine):
    a = make_job([], prompt="keep", seeds=[1], size=(64, 64))
    b = make_job([], prompt="drop", seeds=[2], size=(64, 64))
    steps_seen = []

    def on_progress(info):
        steps_seen.append(info["step"])
        b.canceled = True  # cancel after the first step

    b.on_progress = on_progress
    res = engine.run_batch([a, b])
    assert isinstance(res[1], Canceled) and steps_seen == [1]
    alone = run1(engine, make_job([], prompt="keep", seeds=[1], size=(64, 64)))
    assert np.abs(res[0].pixels[0].astype(int) - alone.pixels[0].astype(int)).max() <= 1


@pytest.mark.parametrize("fmt,magic", [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_output_formats(engine, fmt, magic):
    res = run1(engine, make_job([], seeds=[1], size=(64, 64), output_format=fmt, output_quality=80))
    assert res.images[0].startswith(magic)
