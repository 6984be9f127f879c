"""Warm-up of the compiled LoRA graphs, so the first request with an adapter does not wait for a compile.

A compiled transformer has one graph without adapters, one where every row shares the same adapters and one with
per-row adapters (rows of a batch gathered from different combinations). The bucket warm-up only builds the first;
this runs the other two with an all-zero adapter (its delta is exactly zero) at the rank bucket adapters use.
"""

from __future__ import annotations

import torch

from .adapter import Adapter
from .formats import Delta


def zero_adapter(store, rank: int = 16) -> Adapter:
    modules, nbytes = {}, 0
    for name, (out_f, in_f) in store.shapes.items():
        d = Delta(down=torch.zeros(rank, in_f, dtype=store.dtype), up=torch.zeros(out_f, rank, dtype=store.dtype), scale=1.0)
        modules[name] = d
        nbytes += (d.down.numel() + d.up.numel()) * d.down.element_size()
    return Adapter(sha256="warm-up:zero", modules=modules, nbytes=nbytes, rank=rank)


def warm_lora(engine, width: int, height: int, refs: list, steps: int = 4) -> None:
    """Runs a batch with the zero adapter on its one row, then one mixing it with a row without; twice each."""
    from ..pipeline import Job

    adapter = zero_adapter(engine.adapters)
    for loras_per_row in ([[(adapter, 1.0)]], [[(adapter, 1.0)], []]):
        for _ in range(2):
            jobs = []
            for k, loras in enumerate(loras_per_row):
                job = Job(prompt="warm-up", refs=refs, seeds=[k], width=width, height=height, steps=steps,
                          output_format="jpeg")
                job.loras = loras
                jobs.append(job)
            for res in engine.run_batch(jobs):
                if isinstance(res, Exception):
                    raise RuntimeError(f"LoRA warm-up at {width}x{height} failed: {res}")
    engine.adapters.clear()  # the zero adapter must not hold cache room
