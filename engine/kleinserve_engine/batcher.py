"""Cross-request batching on the asyncio loop.

Jobs with equal batch keys (output size, steps, guidance, reference shapes) that arrive within `window_s` of
the first one form one batch of at most `max_batch` images. Each key has its own timer, so a job never waits
more than the window for jobs of another shape.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class _Group:
    jobs: list = field(default_factory=list)
    images: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    def __init__(self, submit: Callable[[list], None], window_s: float, max_batch: int):
        self.submit = submit
        self.window_s = max(0.0, window_s)
        self.max_batch = max(1, max_batch)
        self._groups: dict[tuple, _Group] = {}

    def add(self, job) -> None:
        key = job.batch_key()
        group = self._groups.get(key)
        if group is not None and group.images + job.num_images > self.max_batch:
            self._flush(key)
            group = None
        if group is None:
            group = self._groups[key] = _Group()
            if self.window_s > 0:
                group.timer = asyncio.get_running_loop().call_later(self.window_s, self._flush, key)
        group.jobs.append(job)
        group.images += job.num_images
        if group.images >= self.max_batch or self.window_s == 0:
            self._flush(key)

    def remove(self, job) -> bool:
        group = self._groups.get(job.batch_key())
        if group is None or job not in group.jobs:
            return False
        group.jobs.remove(job)
        group.images -= job.num_images
        if not group.jobs:
            if group.timer:
                group.timer.cancel()
            del self._groups[job.batch_key()]
        return True

    def _flush(self, key) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        if group.timer:
            group.timer.cancel()
        if group.jobs:
            self.submit(group.jobs)

    @property
    def pending(self) -> int:
        return sum(len(g.jobs) for g in self._groups.values())
