"""Loading through the real path, the tiny model's layout, and the missing-weights failure."""

import asyncio
import hashlib
import json
import os
import subprocess
import sys

import torch

from conftest import EngineProcess
from kleinserve_engine.client import EngineClient


def test_tiny_model_has_the_diffusers_layout(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline" and index["is_distilled"] is True
    for sub in ("tokenizer", "text_encoder", "transformer", "vae", "scheduler"):
        assert (tiny_dir / sub).is_dir()
    te = json.loads((tiny_dir / "text_encoder" / "config.json").read_text())
    assert te["hidden_size"] == 32 and te["num_hidden_layers"] >= 28


def test_tiny_model_is_deterministic(tiny_dir, tmp_path):
    from kleinserve_engine.tiny import make_tiny_model

    again = make_tiny_model(tmp_path / "again")
    for f in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors", "tokenizer/tokenizer.json"):
        assert hashlib.sha256((tiny_dir / f).read_bytes()).digest() == hashlib.sha256((again / f).read_bytes()).digest(), f


def test_text_encoder_is_cut_at_layer_27_and_matches_the_full_model(model, tiny_dir):
    from transformers import Qwen3ForCausalLM

    assert len(model.text_encoder.layers) == 27
    full = Qwen3ForCausalLM.from_pretrained(str(tiny_dir / "text_encoder")).eval()
    ids = torch.randint(0, 250, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.no_grad():
        want = full(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        got = model.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
    for k in (9, 18, 27):
        assert torch.equal(want[k], got[k]), k


def test_vae_batchnorm_stats_are_not_trivial(model):
    assert model.vae.bn.running_mean.abs().max() > 0.1
    assert (model.vae.bn.running_var - 1).abs().max() > 0.1


def test_bf16_on_cpu(tiny_dir):
    from kleinserve_engine.loading import load
    from kleinserve_engine.pipeline import Engine

    from conftest import make_job

    m = load(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert m.transformer.dtype == torch.bfloat16 and m.text_encoder.dtype == torch.bfloat16
    res = Engine(m).run_batch([make_job([], seeds=[1], size=(64, 64))])[0]
    assert res.pixels[0].shape == (64, 64, 3)


def _serve(model, tmp_path, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "kleinserve_engine", "serve", "--model", model, "--listen", f"unix:{tmp_path}/e.sock"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, lines


def test_missing_local_weights_exit_2_with_clear_message(tmp_path):
    missing = tmp_path / "no-such-model"
    proc, lines = _serve(str(missing), tmp_path)
    assert proc.returncode == 2
    assert lines[0]["event"] == "listening"
    failed = lines[-1]
    assert failed["event"] == "failed" and failed["code"] == "MODEL_UNAVAILABLE"
    assert str(missing) in failed["message"] and "HF_TOKEN" in failed["message"] and "--model tiny" in failed["message"]
    assert "huggingface-cli download" in failed["message"]
    assert "Traceback" not in proc.stderr and str(missing) in proc.stderr


def test_unreachable_repo_exit_2_names_the_repo(tmp_path):
    proc, lines = _serve("black-forest-labs/FLUX.2-klein-4B", tmp_path,
                         env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    assert "black-forest-labs/FLUX.2-klein-4B" in lines[-1]["message"]
    assert "Traceback" not in proc.stderr


def test_model_tiny_builds_then_loads_through_the_same_path(tmp_path):
    eng = EngineProcess(["--model", "tiny", "--tiny-dir", str(tmp_path / "tiny"), "--listen", f"unix:{tmp_path}/t.sock"])
    try:
        async def early():
            c = await EngineClient.connect(eng.address)
            try:
                h, _, _ = await c.call({"op": "health"})
                g, _, _ = await c.call({"op": "generate", "prompt": "too early", "width": 64, "height": 64})
                return h, g
            finally:
                await c.close()
        # the socket is bound before torch is even imported, so these answers come while the model loads
        h, g = asyncio.run(early())
        assert h["status"] == "loading" and h["device"] is None
        assert g["op"] == "error" and g["error"]["code"] == "NOT_READY"
        health = eng.wait_ready()
        assert health["status"] == "ready" and health["model"] == "tiny" and health["dtype"] == "float32"
        assert (tmp_path / "tiny" / "model_index.json").is_file()
    finally:
        eng.stop()
