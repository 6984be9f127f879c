"""Fused QKV projections for the double-stream blocks, as a view: one matmul per stream instead of three.

diffusers' Flux2Attention runs `to_qkv` / `to_added_qkv` when its `fused_projections` is set (its own
`fuse_projections()` builds them in place, which would switch every user of the loaded transformer). Here the fused
Linears live in copies of the attention modules inside a shallow copy of the transformer, so the loaded transformer
keeps its separate projections and its behaviour. No weight is held twice: the separate projections' weights become
row slices of the fused weight (same values, so the unfused path computes exactly what it did). The single-stream
blocks already fuse QKV with the MLP input (`to_qkv_mlp_proj`).

The separate projections stay in the view, unused by its forward, so the names a LoRA or an fp8 filter sees are the
checkpoint's: `fused_parts` says where each one's rows lie in its fused Linear (lora/rows.py applies adapters on
to_q/to_k/to_v as slices of to_qkv's output).
"""

from __future__ import annotations

import copy

# fused Linear -> the projections it replaces, in the order of its output rows (diffusers' fuse_projections)
FUSED = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}
BLOCK_LIST = "transformer_blocks"  # the double-stream blocks: the only ones with separate projections


def _fuse_linears(parts):
    """One Linear whose output rows are the parts' in order; each part's weight (and bias) becomes a view into it."""
    import torch

    for p in parts:
        if type(p.weight) is not torch.nn.Parameter:  # a quantized weight is a tensor subclass
            raise RuntimeError("fused QKV must be built before the weights are quantized (fp8 comes after it)")
    first = parts[0]
    weight = torch.cat([p.weight.data for p in parts])
    bias = torch.cat([p.bias.data for p in parts]) if first.bias is not None else None
    fused = torch.nn.Linear(first.in_features, weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    fused.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = torch.nn.Parameter(bias, requires_grad=False)
    row = 0
    for p in parts:
        n = p.out_features
        p.weight.data = weight[row : row + n]
        if bias is not None:
            p.bias.data = bias[row : row + n]
        row += n
    return fused


def _fused_attention(attn):
    view = copy.copy(attn)
    view._modules = dict(attn._modules)
    for fused, parts in FUSED.items():
        linears = [attn._modules.get(p) for p in parts]
        if all(m is not None for m in linears):
            view._modules[fused] = _fuse_linears(linears)
    view.fused_projections = True  # an instance attribute of the copy: the loaded attention keeps its own False
    return view


def with_fused_qkv(transformer):
    """A shallow copy of the transformer whose double-stream attentions run fused projections."""
    import torch

    blocks = []
    for block in getattr(transformer, BLOCK_LIST):
        attn = block.attn
        if not getattr(attn, "_supports_qkv_fusion", False) or getattr(attn, "fused_projections", False):
            raise RuntimeError(f"fused QKV: {type(attn).__name__} cannot be fused here (unsupported or already fused)")
        b = copy.copy(block)
        b._modules = dict(block._modules)
        b._modules["attn"] = _fused_attention(attn)
        blocks.append(b)
    view = copy.copy(transformer)
    view._modules = dict(transformer._modules)
    view._modules[BLOCK_LIST] = torch.nn.ModuleList(blocks)
    return view


def fused_parts(transformer) -> dict[str, tuple[str, int]]:
    """Each projection that a fused Linear replaces in this transformer -> (that Linear's name, its first output row).
    Empty for a transformer without fused projections."""
    out = {}
    for name, module in transformer.named_modules():
        if not getattr(module, "fused_projections", False):
            continue
        for fused, parts in FUSED.items():
            if fused not in module._modules:
                continue
            row = 0
            for p in parts:
                out[f"{name}.{p}"] = (f"{name}.{fused}", row)
                row += module._modules[p].out_features
    return out


def fused_modules(transformer) -> set[str]:
    """Names of the fused Linears themselves (an implementation detail: adapters name the projections)."""
    return {target for target, _ in fused_parts(transformer).values()}
