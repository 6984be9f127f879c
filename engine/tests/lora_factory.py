"""Tiny random LoRAs for the tiny model, written in each published key layout.

An adapter is generated once in BFL's module space (fused qkv, linear1/linear2, ...), so every layout below describes
the same weight change; `expected_deltas` gives that change per diffusers Linear as scale * up @ down.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# BFL module -> (diffusers targets it splits into), for the 2 double + 2 single blocks of the tiny model
BFL_TARGETS = {}
for i in range(2):
    BFL_TARGETS[f"double_blocks.{i}.img_attn.qkv"] = [f"transformer_blocks.{i}.attn.{p}" for p in ("to_q", "to_k", "to_v")]
    BFL_TARGETS[f"double_blocks.{i}.txt_attn.qkv"] = [f"transformer_blocks.{i}.attn.{p}" for p in ("add_q_proj", "add_k_proj", "add_v_proj")]
    BFL_TARGETS[f"double_blocks.{i}.img_attn.proj"] = [f"transformer_blocks.{i}.attn.to_out.0"]
    BFL_TARGETS[f"double_blocks.{i}.txt_attn.proj"] = [f"transformer_blocks.{i}.attn.to_add_out"]
    BFL_TARGETS[f"double_blocks.{i}.img_mlp.0"] = [f"transformer_blocks.{i}.ff.linear_in"]
    BFL_TARGETS[f"double_blocks.{i}.img_mlp.2"] = [f"transformer_blocks.{i}.ff.linear_out"]
    BFL_TARGETS[f"double_blocks.{i}.txt_mlp.0"] = [f"transformer_blocks.{i}.ff_context.linear_in"]
    BFL_TARGETS[f"double_blocks.{i}.txt_mlp.2"] = [f"transformer_blocks.{i}.ff_context.linear_out"]
    BFL_TARGETS[f"single_blocks.{i}.linear1"] = [f"single_transformer_blocks.{i}.attn.to_qkv_mlp_proj"]
    BFL_TARGETS[f"single_blocks.{i}.linear2"] = [f"single_transformer_blocks.{i}.attn.to_out"]
BFL_TARGETS["img_in"] = ["x_embedder"]
BFL_TARGETS["txt_in"] = ["context_embedder"]
BFL_TARGETS["final_layer.linear"] = ["proj_out"]

LAYOUTS = ("diffusers", "bfl", "kohya", "ai-toolkit-bfl", "ai-toolkit-diffusers")


def _shapes(transformer) -> dict[str, tuple[int, int]]:
    return {n: (m.out_features, m.in_features) for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}


def random_lora(transformer, rank: int = 4, seed: int = 0, alpha: float | None = None, magnitude: float = 0.5,
                modules=None) -> dict:
    """{bfl module: (down [r, in], up [out_total, r])} plus the alpha every module uses (None: alpha = rank)."""
    g = torch.Generator().manual_seed(seed)
    shapes = _shapes(transformer)
    weights = {}
    for bfl, targets in BFL_TARGETS.items():
        if modules is not None and bfl not in modules:
            continue
        out_total = sum(shapes[t][0] for t in targets)
        in_f = shapes[targets[0]][1]
        down = torch.randn(rank, in_f, generator=g) * magnitude
        up = torch.randn(out_total, rank, generator=g) * magnitude / rank ** 0.5
        weights[bfl] = (down, up)
    return {"weights": weights, "alpha": alpha, "rank": rank}


def expected_deltas(lora: dict) -> dict[str, torch.Tensor]:
    scale = (lora["alpha"] / lora["rank"]) if lora["alpha"] is not None else 1.0
    out = {}
    for bfl, (down, up) in lora["weights"].items():
        targets = BFL_TARGETS[bfl]
        for t, block in zip(targets, up.chunk(len(targets), dim=0)):
            out[t] = scale * block @ down
    return out


def _diffusers_pairs(lora: dict):
    for bfl, (down, up) in lora["weights"].items():
        targets = BFL_TARGETS[bfl]
        for t, block in zip(targets, up.chunk(len(targets), dim=0)):
            yield t, down, block


def state_dict(lora: dict, layout: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The adapter's tensors (and safetensors metadata) as that layout writes them."""
    sd, meta = {}, None
    alpha = lora["alpha"]
    if layout == "diffusers":
        for t, down, up in _diffusers_pairs(lora):
            sd[f"transformer.{t}.lora_A.weight"] = down.clone()
            sd[f"transformer.{t}.lora_B.weight"] = up.clone()
        if alpha is not None:
            # what diffusers' save_lora_weights writes: PEFT's LoraConfig under the transformer. prefix
            cfg = {"r": lora["rank"], "lora_alpha": alpha, "target_modules": sorted({t for t, _, _ in _diffusers_pairs(lora)})}
            meta = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in cfg.items()})}
    elif layout in ("bfl", "ai-toolkit-bfl"):
        prefix = "diffusion_model." if layout == "ai-toolkit-bfl" else ""
        for bfl, (down, up) in lora["weights"].items():
            sd[f"{prefix}{bfl}.lora_A.weight"] = down.clone()
            sd[f"{prefix}{bfl}.lora_B.weight"] = up.clone()
            if alpha is not None:
                sd[f"{prefix}{bfl}.alpha"] = torch.tensor(float(alpha))
    elif layout == "ai-toolkit-diffusers":
        for t, down, up in _diffusers_pairs(lora):
            sd[f"diffusion_model.{t}.lora_A.weight"] = down.clone()
            sd[f"diffusion_model.{t}.lora_B.weight"] = up.clone()
            if alpha is not None:
                sd[f"diffusion_model.{t}.alpha"] = torch.tensor(float(alpha))
    elif layout == "kohya":
        for bfl, (down, up) in lora["weights"].items():
            stem = "lora_unet_" + bfl.replace(".", "_")
            sd[f"{stem}.lora_down.weight"] = down.clone()
            sd[f"{stem}.lora_up.weight"] = up.clone()
            sd[f"{stem}.alpha"] = torch.tensor(float(alpha if alpha is not None else lora["rank"]))
    else:
        raise ValueError(layout)
    return sd, meta


def write(lora: dict, layout: str, path: Path) -> Path:
    sd, meta = state_dict(lora, layout)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    return path
