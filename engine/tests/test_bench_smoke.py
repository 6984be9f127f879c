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
