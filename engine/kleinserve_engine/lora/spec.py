"""The `loras` field of a generate request, checked before anything is read from disk (no torch here)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidRequest

MAX_LORAS = 3  # as fal's LoRA endpoints
MIN_SCALE, MAX_SCALE = -4.0, 4.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Why an adapter was refused. The control plane turns each into a 422 on input.loras[i].path.
REASONS = (
    "unreadable",          # missing file, permission denied, I/O error
    "too_large",           # file bigger than --lora-max-mb
    "not_a_lora",          # not safetensors, or no LoRA down/up pairs in it
    "unsupported",         # a LoRA variant this engine does not apply (DoRA, LoKr, LoHa, biases, text encoder)
    "no_matching_module",  # its modules do not exist in this model
    "shape_mismatch",      # the module exists with other dimensions (an adapter for another model size)
    "rank_too_large",      # rank above --lora-max-rank
    "hash_mismatch",       # the file's sha256 is not the one the request named
    "out_of_range",        # (on loras[i].scale) the scale is outside [MIN_SCALE, MAX_SCALE]
)


class InvalidLora(InvalidRequest):
    """A refused adapter: names `loras[i].path` (or `.scale`) and one of REASONS."""

    def __init__(self, index: int, reason: str, message: str, attribute: str = "path"):
        assert reason in REASONS, reason
        field = f"loras[{index}].{attribute}"
        super().__init__(f"{field}: {message}", field)
        self.reason = reason
        self.index = index


@dataclass
class LoraOptions:
    max_rank: int = 128
    max_mb: float = 1024  # largest adapter file accepted
    host_cache_mb: float = 2048
    device_cache_mb: float = 1024


@dataclass(frozen=True)
class LoraSpec:
    path: str
    sha256: str | None
    scale: float


def parse_loras(value) -> list[LoraSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest("loras: must be an array of {path, sha256?, scale}", "loras")
    if len(value) > MAX_LORAS:
        raise InvalidRequest(f"loras: at most {MAX_LORAS} adapters, got {len(value)}", "loras")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"loras[{i}]: must be an object {{path, sha256?, scale}}", f"loras[{i}]")
        path = item.get("path")
        if not isinstance(path, str) or not path or len(path) > 4096 or "\x00" in path:
            raise InvalidLora(i, "unreadable", "must be a local file path (a non-empty string)")
        sha = item.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
            raise InvalidRequest(f"loras[{i}].sha256: must be 64 lowercase hex digits or absent", f"loras[{i}].sha256")
        scale = item.get("scale", 1.0)
        scale = 1.0 if scale is None else scale
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not MIN_SCALE <= scale <= MAX_SCALE:
            raise InvalidLora(i, "out_of_range", f"must be a number in [{MIN_SCALE:g}, {MAX_SCALE:g}], got {scale!r}", "scale")
        out.append(LoraSpec(path=path, sha256=sha, scale=float(scale)))
    return out
