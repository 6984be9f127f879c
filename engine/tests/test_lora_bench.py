"""The LoRA benchmark's smoke mode on CPU, so a GPU session finds it working."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine" / "lora_bench.py"


def test_lora_bench_runs_in_tiny_cpu_mode(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--ranks", "4", "--runs", "1",
                           "--warmup", "0", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "lora-tiny-cpu.json").read_text())
    cases = report["cases"]
    assert set(cases) == {"base", "base-batch4", "lora-r4", "switch-r4", "mixed-r4", "same-r4", "merged-r4"}
    for key, case in cases.items():
        assert "error" not in case, (key, case)
        assert case["p50_s"] > 0 and case["denoise_p50_ms"] > 0, key
    for key in ("lora-r4", "switch-r4", "mixed-r4", "same-r4", "merged-r4"):
        assert isinstance(cases[key]["overhead_pct"], float), key
    assert cases["merged-r4"]["merge_s"] >= 0 and cases["merged-r4"]["restore_s"] >= 0
    (first,) = report["first_use"]
    assert "error" not in first and first["host_s"] > 0 and first["file_mb"] > 0
    md = (tmp_path / "lora-tiny-cpu.md").read_text()
    assert "| mixed-r4 |" in md and "First use of an uncached adapter" in md
