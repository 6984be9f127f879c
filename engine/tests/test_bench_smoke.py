"""The GPU benchmark's smoke mode on CPU, so a GPU session finds it working."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine" / "bench.py"


def test_bench_runs_in_tiny_cpu_mode(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--runs", "1", "--warmup", "0",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("engine-tiny-cpu-*.json")).read_text())
    assert set(report["cases"]) == {"a", "b", "c", "d"}
    for key, case in report["cases"].items():
        assert case["kleinserve"]["p50_s"] > 0 and case["diffusers"]["p50_s"] > 0, key
        assert case["denoise_tflops"] > 0
    assert report["cases"]["d"]["batched_throughput_x"] > 0
    md = next(tmp_path.glob("engine-tiny-cpu-*.md")).read_text()
    assert "| (a) edit, 1 reference |" in md and "unbatched" in md


def test_time_to_ready_runs_in_tiny_cpu_mode(tmp_path):
    script = BENCH.parent / "time_to_ready.py"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("time-to-ready-tiny-cpu-*.json")).read_text())
    for run in ("cold", "warm"):
        assert report[run]["status"] == "ready"
        # the socket is bound well before the model is ready: health can answer "loading" meanwhile
        assert report[run]["listening_s"] < report[run]["ready_s"]


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
