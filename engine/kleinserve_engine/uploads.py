"""Host tensors to the GPU without making the host wait.

A plain `.to("cuda")` of a tensor in pageable host memory synchronises the stream after the copy, so the inference
thread would wait for every kernel queued before it. From pinned memory the copy is queued like a kernel and the
host goes on; the caching host allocator keeps the pinned block until the copy has run.
"""

from __future__ import annotations

import torch


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
