"""LoRA over engine protocol v1, against the real `serve` process on the tiny model (one process for this module)."""

import asyncio
import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import EngineProcess
from kleinserve_engine.client import EngineClient
from lora_factory import random_lora, write


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    eng = EngineProcess(["--model", str(tiny_dir), "--listen", "tcp:127.0.0.1:0", "--max-batch", "4", "--data-dir", str(data), "--lora-max-rank", "8", "--lora-max-mb", "0.1"])
    assert eng.wait_ready()["status"] == "ready"
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    t = model.transformer
    out = {
        "a": write(random_lora(t, rank=4, alpha=4.0, seed=1), "kohya", d / "a.safetensors"),
        "b": write(random_lora(t, rank=2, seed=2), "diffusers", d / "b.safetensors"),
        "rank16": write(random_lora(t, rank=16, seed=3, modules={"single_blocks.0.linear2"}), "diffusers", d / "r16.safetensors"),
        "big": write(random_lora(t, rank=8, seed=4), "diffusers", d / "big.safetensors"),
        "not_lora": d / "notes.safetensors",
        "other_model": d / "other.safetensors",
    }
    out["not_lora"].write_bytes(b"this is not a safetensors file at all")
    # an adapter for a bigger model: block 7 does not exist in this one
    save_file({"transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(2, 32),
               "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(32, 2)}, str(out["other_model"]))
    return out


def call(server, header):
    async def go():
        c = await EngineClient.connect(server.address)
        try:
            return await c.call({"op": "generate", "prompt": "a lora fox", "seed": 3, "width": 64, "height": 64, "steps": 2,
                                 "output_format": "png", **header})
        finally:
            await c.close()

    h, blobs, _ = asyncio.run(go())
    return h, blobs


def pixels(blob) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).astype(int)


def test_health_reports_lora_limits(server):
    async def go():
        c = await EngineClient.connect(server.address)
        try:
            return await c.call({"op": "health"})
        finally:
            await c.close()

    h, _, _ = asyncio.run(go())
    assert h["limits"]["max_loras"] == 3 and h["limits"]["max_lora_rank"] == 8


def test_generate_with_loras_and_a_content_hash(server, files):
    plain, pb = call(server, {})
    with_a, ab = call(server, {"loras": [{"path": str(files["a"]), "scale": 1.0}]})
    sha = hashlib.sha256(files["a"].read_bytes()).hexdigest()
    by_hash, hb = call(server, {"loras": [{"path": str(files["a"]), "sha256": sha, "scale": 1.0}]})
    both, bb = call(server, {"loras": [{"path": str(files["a"]), "scale": 1.0}, {"path": str(files["b"]), "scale": -0.5}]})
    assert all(h["ok"] for h in (plain, with_a, by_hash, both)), (plain, with_a, by_hash, both)
    assert np.abs(pixels(pb[0]) - pixels(ab[0])).max() > 20
    assert hb[0] == ab[0]
    assert np.abs(pixels(bb[0]) - pixels(ab[0])).max() > 0


def test_requests_with_different_adapters_share_a_batch(server, files):
    async def go():
        c = await EngineClient.connect(server.address)
        base = {"op": "generate", "prompt": "batch", "width": 64, "height": 64, "steps": 2, "output_format": "png"}
        loras = [[{"path": str(files["a"]), "scale": 1}], [], [{"path": str(files["b"]), "scale": 0.8}],
                 [{"path": str(files["a"]), "scale": 0.5}, {"path": str(files["b"]), "scale": 1}], []]
        try:
            return await asyncio.gather(*(c.call({**base, "seed": i, "loras": la}) for i, la in enumerate(loras)))
        finally:
            await c.close()

    results = [h for h, _, _ in asyncio.run(go())]
    assert all(h["ok"] for h in results), results
    # requests that queue behind a running batch are taken together whatever their adapters
    assert max(h["batch_size"] for h in results) >= 2, [h["batch_size"] for h in results]


@pytest.mark.parametrize("case,reason", [
    ("missing", "unreadable"), ("not_lora", "not_a_lora"), ("other_model", "no_matching_module"),
    ("rank16", "rank_too_large"), ("big", "too_large"), ("hash", "hash_mismatch"),
])
def test_refusals_name_the_adapter_and_the_reason(server, files, tmp_path, case, reason):
    path = {"missing": str(tmp_path / "nope.safetensors"), "hash": str(files["a"])}.get(case) or str(files[case])
    item = {"path": path, "scale": 1}
    if case == "hash":
        item["sha256"] = "0" * 64
    h, _ = call(server, {"loras": [{"path": str(files["b"]), "scale": 1}, item]})
    assert h["op"] == "error" and h["error"]["code"] == "INVALID_REQUEST", h
    assert h["error"]["field"] == "loras[1].path" and h["error"]["reason"] == reason, h["error"]
    assert h["error"]["message"].startswith("loras[1].path: ")


def test_bad_scale_and_too_many_adapters(server, files):
    h, _ = call(server, {"loras": [{"path": str(files["a"]), "scale": 9}]})
    assert h["error"]["field"] == "loras[0].scale" and h["error"]["reason"] == "out_of_range"
    h, _ = call(server, {"loras": [{"path": str(files["a"]), "scale": 1}] * 4})
    assert h["error"]["field"] == "loras"


def test_metrics_report_the_adapter_cache(server, files):
    call(server, {"loras": [{"path": str(files["b"]), "scale": 1}]})

    async def go():
        c = await EngineClient.connect(server.address)
        try:
            return await c.call({"op": "metrics"})
        finally:
            await c.close()

    _, blobs, _ = asyncio.run(go())
    text = blobs[0].decode()
    for name in ("kleinserve_engine_lora_cache_hits_total", "kleinserve_engine_lora_cache_misses_total",
                 "kleinserve_engine_lora_cache_bytes", "kleinserve_engine_lora_load_seconds_count"):
        assert name in text, name
    hits = [line for line in text.splitlines() if line.startswith('kleinserve_engine_lora_cache_hits_total{tier="host"}')]
    assert hits and float(hits[0].split()[-1]) >= 1
