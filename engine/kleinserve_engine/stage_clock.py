"""Stage boundaries of a batch, timed without making the host wait for the GPU.

On CUDA a boundary is an event recorded on the compute stream: recording it queues a timestamp behind the
stage's kernels and returns at once. The elapsed times are read once the batch's pixels are back on the host,
a sync the result needs anyway, after which every event recorded before the copy has completed. Elsewhere a stage's
work is done when its call returns, so a boundary is the host clock.
"""

from __future__ import annotations

import time

import torch


class StageClock:
    def __init__(self, device: torch.device):
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self._marks: dict[str, object] = {}
        self.mark("start")

    def mark(self, name: str) -> None:
        if self._stream is None:
            self._marks[name] = time.perf_counter()
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record(self._stream)
        self._marks[name] = event

    def ms(self, since: str, until: str) -> float:
        """Milliseconds between two marks; on CUDA only once the work up to `until` is known to be done."""
        a, b = self._marks[since], self._marks[until]
        if self._stream is None:
            return (b - a) * 1000
        return a.elapsed_time(b)
