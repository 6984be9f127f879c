"""Test fixtures for the control plane's LoRA, guidance and safety-checker e2e tests, built with the engine's own
helpers: tiny random LoRAs for the tiny model (engine/tests/lora_factory.py), the tiny safety checker, and with
--base the tiny base checkpoint (--no-loras: no LoRAs). Usage: fixtures.py TINY_MODEL_DIR OUT_DIR [--base]
[--no-loras] [--no-checker]; prints a JSON map of what it wrote."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "engine" / "tests"))

import torch  # noqa: E402
from diffusers import Flux2Transformer2DModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from kleinserve_engine.safety import build_tiny_checker  # noqa: E402
from kleinserve_engine.tiny import make_tiny_model  # noqa: E402
from lora_factory import random_lora, write  # noqa: E402

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
made = {}
if "--no-loras" not in sys.argv:
    loras = out / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    t = Flux2Transformer2DModel.from_pretrained(model_dir / "transformer")
    files = {
        # the layouts people publish, so each source kind also proves a different key layout reaches the engine
        "local": write(random_lora(t, rank=4, alpha=4.0, seed=1), "kohya", loras / "style.safetensors"),
        "http": write(random_lora(t, rank=2, seed=2), "diffusers", out / "http.safetensors"),
        "hub": write(random_lora(t, rank=4, seed=3), "bfl", out / "hub.safetensors"),
        "rank": write(random_lora(t, rank=160, seed=4, modules={"single_blocks.0.linear2"}), "diffusers", out / "rank160.safetensors"),
        # a whole, valid adapter just above a small --lora-max-rank (the engine limits test serves with 4)
        "rank8": write(random_lora(t, rank=8, seed=5), "diffusers", loras / "rank8.safetensors"),
        "not_lora": loras / "notes.safetensors",
        "other_model": loras / "other.safetensors",
    }
    files["not_lora"].write_bytes(b"this is not a safetensors file at all")
    # an adapter for a bigger model: block 7 does not exist in the tiny one (only the engine can tell)
    save_file({"transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(2, 32),
               "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(32, 2)}, str(files["other_model"]))
    made = {**{k: str(v) for k, v in files.items()}, "lora_dir": str(loras)}
if "--base" in sys.argv:
    made["base"] = str(out / "tiny-base")
    make_tiny_model(made["base"], distilled=False)
if "--no-checker" not in sys.argv:
    made["checker"] = str(out / "checker")
    build_tiny_checker(made["checker"])
print(json.dumps(made))
