"""Reads one adapter file and checks it against the loaded transformer.

Only safetensors is read: pickled checkpoints (.bin/.pt/.ckpt) can run code when loaded. The file is read once into
memory; its sha256 is computed from those same bytes, so the hash names exactly what was parsed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import torch

from .formats import Delta, FormatError, Resolver, canonical
from .spec import InvalidLora


@dataclass
class Adapter:
    sha256: str
    modules: dict[str, Delta]  # diffusers module path -> down [r, in], up [out, r] (alpha scale kept apart)
    nbytes: int
    rank: int  # largest rank over its modules

    @property
    def short(self) -> str:
        return self.sha256[:12]


@dataclass
class AdapterLimits:
    max_rank: int = 128
    max_bytes: int = 1024 << 20


def linear_shapes(transformer) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear a LoRA can target, by its diffusers module path. Fused projections (fused_qkv.py)
    are not targets: adapters name the checkpoint's separate projections whether or not the engine fuses them."""
    from ..fused_qkv import fused_modules

    fused = fused_modules(transformer)
    return {name: (m.out_features, m.in_features) for name, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and name not in fused}


def _metadata(data: bytes) -> dict | None:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__")


def parse(data: bytes, index: int, shapes: dict[str, tuple[int, int]], resolver: Resolver, limits: AdapterLimits,
          dtype: torch.dtype, sha256: str) -> Adapter:
    """Bytes of a safetensors file -> an Adapter in `dtype` on the CPU, or InvalidLora naming loras[index]."""
    from safetensors.torch import load as load_safetensors

    try:
        if len(data) < 8:
            raise ValueError("shorter than a safetensors header")
        metadata = _metadata(data)
        state = load_safetensors(data)
    except Exception:  # safetensors raises its own error types, json and struct theirs; none is the caller's business
        raise InvalidLora(index, "not_a_lora", "not a safetensors file (only .safetensors adapters are read)") from None
    try:
        modules = canonical(state, metadata, resolver)
    except FormatError as exc:
        raise InvalidLora(index, exc.reason, exc.message) from None
    for name, d in modules.items():
        out_f, in_f = shapes[name]
        if d.down.shape[1] != in_f or d.up.shape[0] != out_f:
            raise InvalidLora(index, "shape_mismatch", f"{name}: the adapter maps {d.down.shape[1]} -> {d.up.shape[0]} features, "
                              f"this model's layer {in_f} -> {out_f} (an adapter for another model size?)")
        if d.rank > limits.max_rank:
            raise InvalidLora(index, "rank_too_large", f"{name}: rank {d.rank} exceeds the limit {limits.max_rank} (--lora-max-rank)")
        if d.rank == 0:
            raise InvalidLora(index, "not_a_lora", f"{name}: rank 0")
    cast = {}
    for name, d in modules.items():
        # a fused qkv shares one down between its three targets: keep sharing it after the cast
        down = cast.setdefault(id(d.down), d.down.to(dtype).contiguous())
        modules[name] = Delta(down=down, up=d.up.to(dtype).contiguous(), scale=d.scale)
    seen, nbytes = set(), 0
    for d in modules.values():
        for t in (d.down, d.up):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                nbytes += t.numel() * t.element_size()
    return Adapter(sha256=sha256, modules=modules, nbytes=nbytes, rank=max(d.rank for d in modules.values()))


def read(path: str, index: int, limits: AdapterLimits) -> tuple[bytes, str]:
    """The file's bytes and their sha256; InvalidLora if it cannot be read or is over the size cap."""
    import os

    try:
        size = os.stat(path).st_size
        if size > limits.max_bytes:
            raise InvalidLora(index, "too_large", f"{size} bytes exceeds the limit of {limits.max_bytes} (--lora-max-mb)")
        with open(path, "rb") as f:
            data = f.read(limits.max_bytes + 1)
    except OSError as exc:
        # the path is the control plane's own (a cache or adapters directory): the message does not repeat it
        raise InvalidLora(index, "unreadable", f"cannot read the adapter file ({exc.strerror or 'I/O error'})") from None
    if len(data) > limits.max_bytes:  # grew after the stat
        raise InvalidLora(index, "too_large", f"more than {limits.max_bytes} bytes (--lora-max-mb)")
    return data, hashlib.sha256(data).hexdigest()
