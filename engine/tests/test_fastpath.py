"""The CUDA fast path's pieces, checked on the CPU: compiled and eager give equal images on the tiny model.

The default run compiles with the aot_eager backend (dynamo graph capture + AOT autograd tracing, seconds on
2 cores). The inductor run generates and builds C++ kernels, which takes minutes here: it is marked slow.
"""

import numpy as np
import pytest

from conftest import make_job, random_image


def compiled_vs_eager(model, backend, scope="blocks"):
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions

    eager = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", compile=False)))
    opts = FastPathOptions.for_device("cpu", compile=True, compile_backend=backend, compile_scope=scope)
    fast = Engine(model, EngineOptions(fastpath=opts))
    assert fast.denoiser.compiled and not eager.denoiser.compiled
    job = lambda: make_job([random_image(64, 64, 8)], prompt="compile me", seeds=[11], output_format="png")  # noqa: E731
    a = eager.run_batch([job()])[0].pixels[0]
    b = fast.run_batch([job()])[0].pixels[0]
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compiled_equals_eager_aot_eager(model, scope):
    diff = compiled_vs_eager(model, "aot_eager", scope)
    print(f"aot_eager compiled ({scope}) vs eager: max abs pixel diff {diff}/255")
    assert diff == 0


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compiled_equals_eager_inductor(model, scope):
    diff = compiled_vs_eager(model, "inductor", scope)
    print(f"inductor compiled ({scope}) vs eager: max abs pixel diff {diff}/255")
    assert diff <= 1


def test_regional_compile_leaves_the_shared_transformer_eager(model):
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions

    blocks = list(model.transformer.transformer_blocks) + list(model.transformer.single_transformer_blocks)
    Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", compile=True, compile_backend="aot_eager")))
    assert list(model.transformer.transformer_blocks) + list(model.transformer.single_transformer_blocks) == blocks
    assert not any(type(b).__name__ == "OptimizedModule" for b in blocks)


def test_regional_compile_does_not_recompile_for_new_shapes_batches_or_a_cancel(model):
    """After one batch of one and one batch of two, no batch size, aspect ratio or mid-run cancel compiles again."""
    from kleinserve_engine.fastpath import FastPathOptions, compiled_graphs
    from kleinserve_engine.pipeline import Engine, EngineOptions

    opts = FastPathOptions.for_device("cpu", compile=True, compile_backend="aot_eager")
    eng = Engine(model, EngineOptions(fastpath=opts, prompt_cache_mb=0, ref_cache_mb=0))
    img = random_image(64, 64, 3)
    eng.run_batch([make_job([img], prompt="warm one", seeds=[1], steps=1)])
    eng.run_batch([make_job([img], prompt="warm two", seeds=[1, 2], steps=1)])
    warmed = compiled_graphs()

    wide = random_image(96, 64, 4)
    assert not isinstance(eng.run_batch([make_job([wide], prompt="new aspect", seeds=[3], steps=1)])[0], Exception)
    jobs = [make_job([wide], prompt=f"member {i}", seeds=[10 + i], steps=3) for i in range(3)]

    def leave_after_first_step(info, job=jobs[1]):
        job.canceled = True
    jobs[0].on_progress = leave_after_first_step
    out = eng.run_batch(jobs)
    assert type(out[1]).__name__ == "Canceled" and out[0].batch_size == 2 and out[2].batch_size == 2
    solo = [make_job([wide], prompt=f"to one {i}", seeds=[20 + i], steps=3) for i in range(2)]

    def down_to_one(info, job=solo[1]):
        job.canceled = True
    solo[0].on_progress = down_to_one
    assert not isinstance(eng.run_batch(solo)[0], Exception)
    four = eng.run_batch([make_job([], prompt="text only", seeds=[1, 2, 3, 4], steps=1, size=(80, 64))])[0]
    assert four.batch_size == 4
    assert compiled_graphs() == warmed, "a new shape, batch size or cancel triggered a recompile"


def test_defaults_are_on_for_cuda_and_off_for_cpu():
    from kleinserve_engine.fastpath import FastPathOptions

    cuda, cpu = FastPathOptions.for_device("cuda"), FastPathOptions.for_device("cpu")
    assert cuda.compile and cuda.channels_last and cuda.sdpa_priority and cuda.cudnn_benchmark
    assert not (cpu.compile or cpu.channels_last or cpu.sdpa_priority or cpu.cudnn_benchmark)
    assert FastPathOptions.for_device("cuda", compile=False).compile is False
    # off until the GPU ablation (gpu-run.sh stage 4) measures them
    for opts in (cuda, cpu):
        assert not (opts.compile_vae or opts.compile_text_encoder or opts.fuse_qkv or opts.fp8_attention)


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


def test_fp8_is_refused_on_cpu_with_its_reason_on_the_wire(model, tiny_dir, tmp_path):
    import json
    import subprocess
    import sys

    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions

    with pytest.raises(RuntimeError, match="CUDA"):
        Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", precision="fp8")))
    # serve: the operator reads why (the failed event and stderr), not a generic "could not be loaded"
    proc = subprocess.run([sys.executable, "-m", "kleinserve_engine", "serve", "--model", str(tiny_dir), "--precision", "fp8",
                           "--listen", f"unix:{tmp_path / 's.sock'}", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "failed"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert failed and "--precision fp8 needs a CUDA device" in failed[0]["message"], events
    assert "needs a CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_fp8_attention_is_refused_off_cuda_and_by_the_command_line(model, tmp_path):
    import subprocess
    import sys

    from kleinserve_engine.fastpath import FastPathOptions, fp8_attention_refusal
    from kleinserve_engine.pipeline import Engine, EngineOptions

    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu", fp8_attention=True)))
    # no FP8 attention kernel is reachable in this build on any device (engine/README.md): refused before loading
    assert "FlashAttention-3" in fp8_attention_refusal("cuda")
    proc = subprocess.run([sys.executable, "-m", "kleinserve_engine", "serve", "--model", "tiny", "--fp8-attention",
                           "--listen", f"unix:{tmp_path / 's.sock'}", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "FlashAttention-3" in proc.stderr and not (tmp_path / "s.sock").exists()


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


def test_fp8_targets_only_the_linears_inside_the_repeated_blocks(model):
    from kleinserve_engine.fastpath import fp8_target

    chosen = {fqn for fqn, m in model.transformer.named_modules() if fp8_target(m, fqn)}
    linears = {fqn for fqn, m in model.transformer.named_modules() if type(m).__name__ == "Linear"}
    assert chosen and chosen < linears
    assert all(f.startswith(("transformer_blocks.", "single_transformer_blocks.")) for f in chosen)
    left = linears - chosen  # modulation (M = 1 per image), timestep embedding, input/output projections
    assert any("modulation" in f for f in left) and any("x_embedder" in f for f in left)
    assert all(not f.startswith(("transformer_blocks.", "single_transformer_blocks.")) for f in left)


def test_uint8_upload_normalises_exactly_as_the_float_path():
    """CUDA references travel as uint8 and are normalised on the device; the arithmetic must equal to_tensor's."""
    import torch

    from kleinserve_engine.fastpath import normalise_uint8, upload_image
    from kleinserve_engine.preprocess import to_tensor

    img = random_image(80, 48, 2)
    expected = to_tensor(img)
    got = normalise_uint8(torch.from_numpy(np.array(img, dtype=np.uint8)))
    assert torch.equal(got, expected) and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(upload_image(img, torch.device("cpu"), torch.float32), expected)


def test_metrics_report_the_compiled_graph_count():
    import torch._dynamo  # noqa: F401  (the engine has imported it once a model is loaded)

    from kleinserve_engine.fastpath import compiled_graphs
    from kleinserve_engine.metrics import Metrics

    text = Metrics().render().decode()
    assert f"kleinserve_engine_compiled_graphs {float(compiled_graphs())}" in text
