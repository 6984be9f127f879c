"""The CUDA fast path's pieces, checked on the CPU: compiled and eager give equal images on the tiny model.

The default run compiles with the aot_eager backend (dynamo graph capture + AOT autograd tracing, seconds on
2 cores). The inductor run generates and builds C++ kernels, which takes minutes here: it is marked slow.
"""

import numpy as np
import pytest

from conftest import make_job, random_image


def compiled_vs_eager(model, backend):
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions

    eager = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", compile=False)))
    fast = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", compile=True, compile_backend=backend)))
    assert fast.denoiser.compiled and not eager.denoiser.compiled
    job = lambda: make_job([random_image(64, 64, 8)], prompt="compile me", seeds=[11], output_format="png")  # noqa: E731
    a = eager.run_batch([job()])[0].pixels[0]
    b = fast.run_batch([job()])[0].pixels[0]
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_compiled_equals_eager_aot_eager(model):
    diff = compiled_vs_eager(model, "aot_eager")
    print(f"aot_eager compiled vs eager: max abs pixel diff {diff}/255")
    assert diff == 0


@pytest.mark.slow
def test_compiled_equals_eager_inductor(model):
    diff = compiled_vs_eager(model, "inductor")
    print(f"inductor compiled vs eager: max abs pixel diff {diff}/255")
    assert diff <= 1


def test_defaults_are_on_for_cuda_and_off_for_cpu():
    from kleinserve_engine.fastpath import FastPathOptions

    cuda, cpu = FastPathOptions.for_device("cuda"), FastPathOptions.for_device("cpu")
    assert cuda.compile and cuda.channels_last and cuda.sdpa_priority
    assert not (cpu.compile or cpu.channels_last or cpu.sdpa_priority)
    assert FastPathOptions.for_device("cuda", compile=False).compile is False


def test_warmup_buckets_parse_and_run(engine):
    from kleinserve_engine.warmup import DEFAULT_CUDA_BUCKETS, parse_buckets, warm

    assert parse_buckets("none") == []
    defaults = parse_buckets(DEFAULT_CUDA_BUCKETS)
    assert (1024, 1024, 4, 1) in defaults and (1024, 1024, 0, 1) in defaults and (512, 512, 1, 4) in defaults
    for bad in ("100x64:1", "64x64:5", "64x64:1*0", "64x64:x"):
        with pytest.raises(ValueError):
            parse_buckets(bad)
    assert warm(engine, parse_buckets("64x64:1,64x64:0*2")) > 0
    assert len(engine.prompt_cache) == 0  # warm-up leaves no entries behind


def test_fp8_is_refused_on_cpu(model):
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions

    with pytest.raises(RuntimeError, match="CUDA"):
        Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", precision="fp8")))


def test_cuda_layout_and_attention_options_keep_the_image(model):
    """channels_last VAE input and the SDPA priority context are CUDA defaults; on CPU they must not change pixels."""
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.loading import load
    from kleinserve_engine.pipeline import Engine, EngineOptions

    fresh = load(str(model.path), device="cpu")  # channels_last converts the VAE in place: keep the shared model as is
    opts = FastPathOptions.for_device("cpu", channels_last=True, sdpa_priority=True)
    fast = Engine(fresh, EngineOptions(fastpath=opts))
    eager = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu")))
    job = lambda: make_job([random_image(64, 80, 9)], prompt="layouts", seeds=[5])  # noqa: E731
    a = eager.run_batch([job()])[0].pixels[0]
    b = fast.run_batch([job()])[0].pixels[0]
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1
