"""The safety checker on the tiny random classifier, loaded through the real path. Its scores mean nothing, so the
thresholds decide: 0 flags every image, 1.01 none."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EngineProcess, make_job
from kleinserve_engine.client import EngineClient
from kleinserve_engine.errors import ModelUnavailable, NsfwContent
from kleinserve_engine.pipeline import Engine, EngineOptions, JobResult
from kleinserve_engine.safety import SafetyChecker, SafetyOptions

ROOT = Path(__file__).resolve().parents[2]


def checker(tiny_checker_dir, **kw):
    import torch
    from prometheus_client import CollectorRegistry

    c = SafetyChecker.load(SafetyOptions(str(tiny_checker_dir), **kw), torch.device("cpu"))
    c.attach_metrics(CollectorRegistry())
    return c


def jobs(n=3, **kw):
    return [make_job([], prompt=f"prompt {i}", seeds=[i], size=(64, 64), steps=1, output_format="png", **kw) for i in range(n)]


def sharpness(pixels) -> float:
    return float(np.abs(np.diff(pixels.astype(int), axis=1)).mean())


def test_threshold_decides_and_flag_policy_keeps_the_image(model, tiny_checker_dir):
    plain = Engine(model).run_batch(jobs())
    always = checker(tiny_checker_dir, threshold=0.0, policy="flag")
    flagged = Engine(model, EngineOptions(safety=always)).run_batch(jobs())
    never = Engine(model, EngineOptions(safety=checker(tiny_checker_dir, threshold=1.01))).run_batch(jobs())
    for p, f, n in zip(plain, flagged, never):
        assert f.safety[0]["nsfw"] is True and n.safety[0]["nsfw"] is False
        assert 0 <= f.safety[0]["nsfw_score"] <= 1 and f.safety[0]["nsfw_score"] == n.safety[0]["nsfw_score"]
        assert f.images[0] == p.images[0] == n.images[0]  # flag only reports
        assert "safety_check_ms" in f.timings and "safety_check_ms" not in p.timings
    assert always.checks._value.get() == 3 and always.flags.labels("flag")._value.get() == 3


def test_every_image_of_a_batch_is_classified_in_one_call(model, tiny_checker_dir):
    c = checker(tiny_checker_dir, threshold=0.0)
    calls = []
    real = c.model.forward
    c.model.forward = lambda **kw: calls.append(kw["pixel_values"].shape[0]) or real(**kw)
    batch = jobs(2) + [make_job([], prompt="two images", seeds=[5, 6], size=(64, 64), steps=1)]
    res = Engine(model, EngineOptions(safety=c)).run_batch(batch)
    assert calls == [4] and [len(r.safety) for r in res] == [1, 1, 2]


def test_blur_policy_returns_a_heavily_blurred_image(model, tiny_checker_dir):
    plain = Engine(model).run_batch(jobs(1))[0]
    blurred = Engine(model, EngineOptions(safety=checker(tiny_checker_dir, threshold=0.0, policy="blur"))).run_batch(jobs(1))[0]
    assert blurred.safety[0]["nsfw"] is True and blurred.images[0] != plain.images[0]
    assert sharpness(blurred.pixels[0]) < sharpness(plain.pixels[0]) / 4


def test_fail_policy_answers_nsfw_content_and_spares_opted_out_requests(model, tiny_checker_dir):
    eng = Engine(model, EngineOptions(safety=checker(tiny_checker_dir, threshold=0.0, policy="fail")))
    checked, opted_out = jobs(2)
    opted_out.safety_check = False
    res = eng.run_batch([checked, opted_out])
    assert isinstance(res[0], NsfwContent) and res[0].code == "NSFW_CONTENT"
    assert isinstance(res[1], JobResult) and res[1].safety is None


def test_checker_without_an_unsafe_label_or_model_is_a_startup_error(tiny_checker_dir, tmp_path):
    import torch

    with pytest.raises(ModelUnavailable, match="none of its labels"):
        SafetyChecker.load(SafetyOptions(str(tiny_checker_dir), unsafe_labels="violence"), torch.device("cpu"))
    with pytest.raises(ModelUnavailable, match="no config.json"):
        SafetyChecker.load(SafetyOptions(str(tmp_path)), torch.device("cpu"))
    with pytest.raises(ValueError, match="--safety-policy"):
        SafetyOptions(str(tiny_checker_dir), policy="hide")


def test_missing_checker_stops_serve_with_exit_2(tiny_dir, tmp_path):
    missing = tmp_path / "no-checker"
    proc = subprocess.run(
        [sys.executable, "-m", "kleinserve_engine", "serve", "--model", str(tiny_dir), "--listen", f"unix:{tmp_path}/e.sock",
         "--safety-checker", str(missing)], capture_output=True, text=True, timeout=180, env=os.environ)
    failed = json.loads(proc.stdout.splitlines()[-1])
    assert proc.returncode == 2 and failed["code"] == "MODEL_UNAVAILABLE"
    assert str(missing) in failed["message"] and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def failing_server(tiny_dir, tiny_checker_dir, tmp_path_factory):
    eng = EngineProcess(["--model", str(tiny_dir), "--listen", "tcp:127.0.0.1:0", "--data-dir", str(tmp_path_factory.mktemp("data")), "--safety-checker", str(tiny_checker_dir),
                         "--safety-policy", "fail", "--safety-threshold", "0"])
    assert eng.wait_ready()["status"] == "ready"
    yield eng
    eng.stop()


def test_fail_policy_over_the_wire(failing_server):
    async def go():
        c = await EngineClient.connect(failing_server.address)
        try:
            health, _, _ = await c.call({"op": "health"})
            req = {"op": "generate", "prompt": "x", "seed": 1, "width": 64, "height": 64, "steps": 1}
            flagged, blobs, _ = await c.call(req)
            opt_out, _, _ = await c.call({**req, "safety_checker": False})
            metrics, text, _ = await c.call({"op": "metrics"})
            return health, flagged, blobs, opt_out, text[0].decode()
        finally:
            await c.close()

    health, flagged, blobs, opt_out, metrics = asyncio.run(go())
    assert health["safety"] == {"enabled": True, "model": health["safety"]["model"], "policy": "fail", "threshold": 0.0,
                                "unsafe_labels": "nsfw|unsafe|porn|hentai|sexy", "allow_opt_out": False}
    assert flagged["op"] == "error" and flagged["error"]["code"] == "NSFW_CONTENT" and blobs == []
    assert opt_out["error"]["code"] == "INVALID_REQUEST" and opt_out["error"]["field"] == "safety_checker"
    assert "kleinserve_engine_safety_checks_total 1.0" in metrics
    assert 'kleinserve_engine_safety_flagged_total{policy="fail"} 1.0' in metrics


def test_overhead_benchmark_runs_in_smoke_mode(tmp_path):
    import runpy

    bench = runpy.run_path(str(ROOT / "bench" / "engine" / "safety_bench.py"))
    assert bench["main"](["--device", "cpu", "--tiny", "--runs", "1", "--warmup", "0", "--batches", "1", "--out", str(tmp_path)]) == 0
    cases = json.loads((tmp_path / "safety-tiny-cpu.json").read_text())["cases"]
    assert set(cases) == {"none-b1", "flag-b1", "blur-b1"} and not any("error" in c for c in cases.values())
    assert cases["blur-b1"]["flagged_first_job_images"] == 1 and cases["flag-b1"]["flagged_first_job_images"] == 0
    assert cases["none-b1"]["safety_check_p50_ms"] is None and cases["flag-b1"]["safety_check_p50_ms"] > 0
