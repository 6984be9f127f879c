"""Every LoRA key layout published for FLUX.2 [klein], turned into one canonical form.

Canonical: {diffusers module path in Flux2Transformer2DModel: Delta(down [r, in], up [out, r], scale)}, where the
module's output gains `scale * up @ down @ x` (scale = alpha / r, or alpha / sqrt(r) for rsLoRA).

Layouts read (a file may mix prefixes; each key is resolved on its own):
- diffusers / PEFT: `transformer.<module>.lora_A.weight` / `.lora_B.weight`, alphas in the safetensors metadata
  `lora_adapter_metadata` (PEFT LoraConfig: lora_alpha, alpha_pattern, use_rslora); also bare `<module>.lora_A...`
  (SimpleTuner) and `base_model.model.<module>...`.
- BFL's own module names (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, `final_layer.linear`, ...),
  bare or under ai-toolkit's / ComfyUI's `diffusion_model.` prefix, with lora_A/lora_B or lora_down/lora_up and
  optional `.alpha`. A fused qkv splits into three modules: the same down, the up cut in three row blocks.
- ai-toolkit: `diffusion_model.` followed by either BFL names or diffusers names.
- kohya / sd-scripts / musubi: `lora_unet_<BFL name with _>` or `lora_transformer_<diffusers name with _>`,
  `.lora_down.weight` / `.lora_up.weight` / `.alpha`.

Module names follow diffusers' scripts/convert_flux2_to_diffusers.py and loaders/lora_conversion_utils.py. One
deliberate difference: BFL's final_layer.adaLN_modulation.1 emits (shift, scale) and diffusers' norm_out.linear
(scale, shift), so its up matrix has its two row halves swapped here, as the base-weight conversion does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import torch


class FormatError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Delta:
    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


# key suffix -> which half of the pair it is
_SUFFIXES = (
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".alpha", "alpha"),
)
_UNSUPPORTED = (
    (("dora_scale", "lora_magnitude_vector"), "DoRA adapters are not supported"),
    ((".lokr_", ".hada_", ".oft_"), "LoKr / LoHa / OFT adapters are not supported, only LoRA"),
    ((".lora_B.bias", ".lora_up.bias", ".diff_b", ".diff"), "LoRA biases and full weight diffs are not supported"),
)
_TEXT_ENCODER = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_", "te.", "text_model.")
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "unet.")
_UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_", "lora_flux_")

# BFL module -> diffusers module(s) within one block; several targets = a fused output split into equal row blocks
_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.linear_in",),
    "img_mlp.2": ("ff.linear_out",),
    "txt_mlp.0": ("ff_context.linear_in",),
    "txt_mlp.2": ("ff_context.linear_out",),
}
_SINGLE = {"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)}
_GLOBAL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
}
_SWAP_HALVES = {"final_layer.adaLN_modulation.1"}
_BLOCK = re.compile(r"^(double_blocks|single_blocks|transformer_blocks|sformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def _bfl_names(n_double: int, n_single: int) -> list[str]:
    names = list(_GLOBAL)
    names += [f"double_blocks.{i}.{k}" for i in range(n_double) for k in _DOUBLE]
    names += [f"single_blocks.{i}.{k}" for i in range(n_single) for k in _SINGLE]
    return names


class Resolver:
    """Maps a module name in any published layout to the diffusers Linear(s) of the loaded model."""

    def __init__(self, linear_names):
        self.linears = set(linear_names)
        n_double = 1 + max((int(m.group(2)) for m in map(_BLOCK.match, self.linears) if m and m.group(1) == "transformer_blocks"), default=-1)
        n_single = 1 + max((int(m.group(2)) for m in map(_BLOCK.match, self.linears) if m and m.group(1) == "single_transformer_blocks"), default=-1)
        # kohya writes dotted names with underscores; both naming schemes are indexed (no name occurs in both)
        self.underscored = {n.replace(".", "_"): n for n in [*self.linears, *_bfl_names(n_double, n_single)]}

    def resolve(self, stem: str) -> tuple[tuple[str, ...], bool] | None:
        """(diffusers targets, swap halves) for a dotted or underscored module name, or None if nothing matches."""
        name = stem
        if name not in self.linears and not _BLOCK.match(name) and name not in _GLOBAL:
            for prefix in _UNDERSCORE_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            name = self.underscored.get(name, name)
        if name in self.linears:
            return (name,), False
        if name in _GLOBAL:
            return (_GLOBAL[name],), name in _SWAP_HALVES
        m = _BLOCK.match(name)
        if m:
            kind, idx, rest = m.groups()
            if kind == "sformer_blocks":  # an alias some exports write for transformer_blocks
                target = f"transformer_blocks.{idx}.{rest}"
                return ((target,), False) if target in self.linears else None
            table = _DOUBLE if kind == "double_blocks" else _SINGLE if kind == "single_blocks" else None
            if table and rest in table:
                prefix = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
                return tuple(f"{prefix}.{idx}.{t}" for t in table[rest]), False
        return None


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    # PEFT with an adapter name inside the key: <module>.lora_A.<adapter>.weight
    m = re.match(r"^(.*)\.lora_([AB])\.[^.]+\.weight$", key)
    if m:
        return m.group(1), "down" if m.group(2) == "A" else "up"
    return None


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _peft_alphas(metadata: dict | None):
    """PEFT's LoraConfig from diffusers' `lora_adapter_metadata`, keys with or without the `transformer.` prefix."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return None
    if any(k.startswith("transformer.") for k in cfg):
        cfg = {k[len("transformer."):]: v for k, v in cfg.items() if k.startswith("transformer.")}
    return cfg


def _alpha_from_config(cfg: dict, module: str, rank: int) -> float:
    alpha = cfg.get("lora_alpha", rank)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        # PEFT's rule: a key matches a module name ending in it (a leading ^ anchors it to the full name)
        regex = pattern[1:] if pattern.startswith("^") else rf"(.*\.)?{pattern}"
        if re.fullmatch(regex, module) or re.fullmatch(regex, "transformer." + module):
            alpha = value
            break
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def canonical(state: dict[str, torch.Tensor], metadata: dict | None, resolver: Resolver) -> dict[str, Delta]:
    """Raises FormatError for anything that is not a LoRA this model can take."""
    if not state:
        raise FormatError("not_a_lora", "the file holds no tensors")
    for markers, why in _UNSUPPORTED:
        bad = next((k for k in state if any(m in k for m in markers)), None)
        if bad is not None:
            raise FormatError("unsupported", f"{why} (key {bad!r})")
    te = next((k for k in state if k.startswith(_TEXT_ENCODER)), None)
    if te is not None:
        raise FormatError("unsupported", f"text-encoder LoRAs are not supported, only the transformer (key {te!r})")

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            raise FormatError("not_a_lora", f"key {key!r} is not a LoRA down/up weight or alpha")
        stem, part = split
        pairs.setdefault(_strip(stem), {})[part] = tensor
    peft = _peft_alphas(metadata)

    out: dict[str, Delta] = {}
    unmatched = []
    for stem, parts in pairs.items():
        if "down" not in parts or "up" not in parts:
            raise FormatError("not_a_lora", f"{stem}: has {'down' if 'down' in parts else 'up'} weights without their pair")
        down, up = parts["down"], parts["up"]
        if not (down.is_floating_point() and up.is_floating_point()) or down.ndim != 2 or up.ndim != 2:
            raise FormatError("not_a_lora", f"{stem}: LoRA weights must be 2-D float matrices, got {tuple(down.shape)} / {tuple(up.shape)}")
        rank = down.shape[0]
        if up.shape[1] != rank:
            raise FormatError("not_a_lora", f"{stem}: down has rank {rank} but up has {up.shape[1]} columns")
        resolved = resolver.resolve(stem)
        if resolved is None:
            unmatched.append(stem)
            continue
        targets, swap = resolved
        if "alpha" in parts:
            scale = float(parts["alpha"].float().reshape(-1)[0]) / rank
        elif peft is not None:
            scale = _alpha_from_config(peft, targets[0], rank)
        else:
            scale = 1.0  # diffusers / PEFT convention without alpha: W + up @ down
        if swap:
            first, second = up.chunk(2, dim=0)
            up = torch.cat([second, first])
        if up.shape[0] % len(targets):
            raise FormatError("shape_mismatch", f"{stem}: {up.shape[0]} output rows do not split into {len(targets)} projections")
        for target, block in zip(targets, up.chunk(len(targets), dim=0)):
            if target in out:
                raise FormatError("not_a_lora", f"module {target} appears twice (as {stem} and another key)")
            out[target] = Delta(down=down, up=block, scale=scale)
    if unmatched:
        shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
        what = "no module of this model matches" if not out else f"{len(unmatched)} of {len(pairs)} modules do not exist in this model"
        raise FormatError("no_matching_module", f"{what}: {shown}")
    return out
