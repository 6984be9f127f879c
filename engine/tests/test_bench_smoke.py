"""The GPU benchmark stages dry-run on the CPU with the tiny model, so a GPU session finds them working."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine" / "bench.py"
GPU_RUN = BENCH.parent / "gpu-run.sh"


def dry_run(tmp_path, *stages):
    out = tmp_path / "out"
    env = {**os.environ, "KLEINSERVE_BENCH_DEVICE": "cpu", "PY": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(GPU_RUN), *stages], capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    names = sorted(p.name for p in out.iterdir())
    for n in names:  # the device tool returns only files named in these characters
        assert all(ch.isalnum() or ch in "._-" for ch in n), n
    assert f"stage {stages[-1]} ends" in (out / "gpu-run.log").read_text()
    return out, names


def test_gpu_run_smoke_and_stage_1_dry_run_on_cpu(tmp_path):
    """The first GPU command (`smoke 1`) on the tiny model: what a GPU session runs, minus the GPU."""
    out, names = dry_run(tmp_path, "smoke", "1")
    assert len(names) <= 5, names  # with stage 2 in the same command still within the tool's 8 files

    smoke = json.loads((out / "engine-cpu-smoke.json").read_text())
    assert smoke["software"]["torch"] and smoke["pytest_rc"] == 0
    checks = {c["check"].split(" (")[0]: c for c in smoke["checks"]}
    assert {"eager", "compiled", "no recompile for a new batch size or aspect", "deterministic request: same bytes alone and among neighbours"} <= set(checks)
    assert all(c["ok"] for c in smoke["checks"]), smoke["checks"]
    assert "| eager | ok |" in (out / "engine-cpu-smoke.md").read_text()

    s1 = json.loads((out / "engine-tiny-cpu-stage1.json").read_text())
    assert set(s1["cases"]) == {"a", "c"}
    for key, case in s1["cases"].items():
        assert case["kleinserve"]["p50_s"] > 0 and case["diffusers"]["p50_s"] > 0 and case["denoise_tflops"] > 0, key
        assert "error" not in case, case
    assert s1["profile"]["a"] and s1["compile"] is True and s1["compile_scope"] == "blocks"
    md1 = (out / "engine-tiny-cpu-stage1.md").read_text()
    assert "| (a) edit, 1 reference |" in md1 and "cuDNN" in md1 and "Top kernels" in md1


@pytest.mark.slow
def test_gpu_run_stages_2_and_3_dry_run_on_cpu(tmp_path):
    out, names = dry_run(tmp_path, "2", "3")
    s2 = json.loads((out / "engine-tiny-cpu-stage2.json").read_text())
    assert set(s2["cases"]) == {"b", "d"}
    d = s2["cases"]["d"]
    assert d["batched_throughput_x"] > 0 and d["deterministic"]["p50_s"] > 0 and d["deterministic_cost_x"] > 0
    steps = [row["step"] for row in s2["ablation"]]
    assert steps[0].startswith("eager") and any("regional" in st for st in steps) and any("whole-model" in st for st in steps)
    assert all("error" not in row for row in s2["ablation"]), s2["ablation"]
    # aot_eager on the CPU computes what eager does: every row's output matches the first row's
    assert all(row["vs_first_row"]["mean_abs_diff"] < 0.5 for row in s2["ablation"]), s2["ablation"]
    assert s2["batch_sweep"] and s2["suggested_batch_rule"]

    s3 = json.loads((out / "engine-tiny-cpu-stage3.json").read_text())
    assert "a" in s3["cases"] and any("fp8 skipped" in n for n in s3["notes"])
    ttr = json.loads((out / "engine-tiny-cpu-time-to-ready.json").read_text())
    for run in ("cold", "warm"):
        assert ttr[run]["status"] == "ready"
        # the socket is bound well before the model is ready: health can answer "loading" meanwhile
        assert ttr[run]["listening_s"] < ttr[run]["ready_s"]
        assert ttr[run]["after_ready"]["alone_first_s"] > 0 and ttr[run]["after_ready"]["two_images_first_s"] > 0


@pytest.mark.slow
def test_gpu_run_stage_4_dry_run_on_cpu(tmp_path):
    """The optional fast-path pieces, one row each on top of the default fast path, timed by stage."""
    out, names = dry_run(tmp_path, "4")
    s4 = json.loads((out / "engine-tiny-cpu-stage4.json").read_text())
    assert s4["cases"] == {}
    rows = {row["step"]: row for row in s4["ablation"]}
    assert all("error" not in row for row in rows.values()), rows
    for piece in ("cudnn.benchmark", "compiled VAE", "compiled text encoder", "fused QKV"):
        assert any(piece in step for step in rows), (piece, list(rows))
    assert not any("fp8 attention" in step for step in rows)  # CUDA only
    for row in rows.values():
        assert row["vs_first_row"]["mean_abs_diff"] < 0.5, row
        assert row["p50_s"] > 0 and {"text_encode_ms", "vae_encode_ms", "denoise_ms", "decode_ms"} <= set(row["stage_p50_ms"])
    md = (out / "engine-tiny-cpu-stage4.md").read_text()
    assert "text / vae enc / denoise / decode" in md and "+ fused QKV" in md


def test_gpu_run_refuses_an_unknown_stage(tmp_path):
    proc = subprocess.run(["bash", str(GPU_RUN), "5"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(tmp_path)})
    assert proc.returncode == 2 and "unknown stage" in proc.stderr


def test_report_is_rewritten_after_every_case(tmp_path):
    """A stage killed at its time limit still leaves complete files with what it had measured."""
    sys.path.insert(0, str(BENCH.parent))
    import bench

    data = {"machine": "m", "date": "d", "software": bench.software(), "dtype": "float32", "compile": False, "compile_scope": "blocks",
            "compile_backend": "inductor", "model": "tiny", "runs": 1, "warmup": 1, "matmul_peak_tflops": None,
            "cases": {}, "command": "x", "notes": []}
    report = bench.Report(tmp_path, "engine-test", data)
    entry = data["cases"].setdefault("a", {"description": "edit, 1 reference"})
    bench.guarded(report, entry, "boom", lambda: 1 / 0)
    saved = json.loads((tmp_path / "engine-test.json").read_text())
    assert saved["cases"]["a"]["error"].startswith("ZeroDivisionError")
    assert "failed: ZeroDivisionError" in (tmp_path / "engine-test.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_full_size_configs_match_the_published_model():
    """Built on the meta device (no memory): the GPU run must not be the first to notice a config typo."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    sys.path.insert(0, str(BENCH.parent))
    import bench

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel(**bench.KLEIN_4B_TRANSFORMER)
        text = Qwen3ForCausalLM(Qwen3Config(**bench.QWEN3_4B))
        vae = AutoencoderKLFlux2()
    n_dit = sum(p.numel() for p in transformer.parameters())
    n_text = sum(p.numel() for p in text.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    assert 3.8e9 < n_dit < 3.95e9, n_dit  # ~3.88B
    assert 3.9e9 < n_text < 4.1e9, n_text  # Qwen3-4B, tied embeddings
    assert 7e7 < n_vae < 1e8, n_vae  # ~84M
    # shared/docs/flux2-klein.md (each token passes one stream of the double blocks): 307 TFLOP for a 1024^2 edit
    # with one reference, 1,057 with four, 139 for text-to-image, 71 per 512^2 one-reference edit; 4 steps
    for (size, refs), tflop in {(1024, 1): 307, (1024, 4): 1057, (1024, 0): 139, (512, 1): 71}.items():
        assert abs(bench.denoise_flops(transformer, size, refs) / 1e12 - tflop) < 0.01 * tflop, (size, refs)


def test_smoke_host_sync_count_names_each_wait_and_sets_batch_start_apart(model, monkeypatch, tmp_path):
    """The CUDA-only sync count, run here with torch's sync warnings simulated where the engine would make them:
    one at batch start (text encoding), the decode's pixel copy, and a stray one mid-batch, which must fail the
    check and be named by its line."""
    import types
    import warnings

    import torch

    sys.path.insert(0, str(BENCH.parent))
    import smoke
    from kleinserve_engine import latents, text_encoding
    from kleinserve_engine.fastpath import FastPathOptions
    from kleinserve_engine.pipeline import Engine, EngineOptions, Job
    from kleinserve_engine.preprocess import Reference
    from conftest import random_image

    def warns(fn):
        def wrapped(*a, **kw):
            warnings.warn("called a synchronizing CUDA operation")
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    monkeypatch.setattr(text_encoding, "upload", warns(text_encoding.upload))
    monkeypatch.setattr(latents, "to_uint8", warns(latents.to_uint8))
    engine = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu")))
    img = random_image(48, 32)

    def job(seeds=(1,), prompt="p", **kw):
        return Job(prompt=prompt, refs=[Reference(img, "sync-ref")], seeds=list(seeds), width=48, height=32, steps=2,
                   output_format="png", **kw)

    def run(eng, jobs):
        return eng.run_batch(jobs), 0.0

    checks = []
    cuda = types.SimpleNamespace(type="cuda")
    smoke.host_sync_check(engine, job, run, cuda, lambda n, ok, d: checks.append((ok, d)), tmp_path)
    (ok, detail), = checks
    # the prompts' ids and mask at batch start, set apart; the decode's copy is the one wait allowed
    assert ok and detail.startswith("1 sync(s) past the batch start"), detail
    assert "2x batch start: text_encoding.py" in detail and "1x pipeline.py" in detail and "to_uint8" in detail, detail

    from kleinserve_engine.lora import rows
    monkeypatch.setattr(rows, "upload", warns(rows.upload))
    checks.clear()
    smoke.host_sync_check(engine, job, run, cuda, lambda n, ok, d: checks.append((ok, d)), tmp_path)
    (ok, detail), = checks
    # a wait in the LoRA rows' planning is past the batch start: the check fails and names its line
    assert not ok and detail.startswith("2 sync(s)") and "1x rows.py" in detail, detail
