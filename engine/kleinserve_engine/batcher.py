"""Which queued requests run together: batching that never adds latency.

There is no batching window. A request is handed to the inference thread the moment it is ready; if the thread is
idle it starts at once, alone. Requests that arrive while the thread is busy wait in this queue anyway, and when
the thread comes back for work it takes the oldest one together with the later ones of the same batch key
(output size, steps, reference shapes), up to the batch limit of that output size. The limit counts the rows the
transformer runs, not requests: an image is one row, a guided image two (its unconditional pass rides along).

The limit per size is the batching rule (`--batch-rule`): batching only pays where one request leaves the GPU
underused, which is at small outputs; at 1024² one image already saturates an H100, a batch of two takes about
twice as long, and the first request would wait for the second for nothing. The rule is a list of `WxH:N`: an
output of A pixels gets the N of the smallest listed size of at least A pixels, 1 above the largest; the
benchmark's batch sweep measures where batching pays on a card and suggests the rule. A deterministic request
always runs alone, so no neighbour can change its bytes.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

DEFAULT_BATCH_RULE = "512x512:4,1024x1024:1"


@dataclass(frozen=True)
class BatchRule:
    limits: tuple[tuple[int, int], ...]  # (max output pixels, max transformer rows per batch), ascending by pixels
    max_batch: int = 4

    @classmethod
    def parse(cls, spec: str, max_batch: int = 4) -> "BatchRule":
        """'WxH:N,...' -> rule; 'none' or '' -> no batching at all."""
        if max_batch < 1:
            raise ValueError(f"max batch must be at least 1, got {max_batch}")
        limits = []
        for part in (spec or "").split(","):
            part = part.strip()
            if not part or part == "none":
                continue
            size, _, n = part.partition(":")
            w, _, h = size.partition("x")
            try:
                area, limit = int(w) * int(h), int(n)
            except ValueError:
                area, limit = 0, 0
            if area <= 0 or limit < 1:
                raise ValueError(f"batch rule {part!r}: want WxH:N with positive sizes and N >= 1")
            limits.append((area, limit))
        return cls(tuple(sorted(limits)), max_batch)

    def limit_for(self, job) -> int:
        if getattr(job, "deterministic", False):
            return 1
        area = job.width * job.height
        for max_area, limit in self.limits:
            if area <= max_area:
                return min(limit, self.max_batch)
        return 1

    def describe(self) -> str:
        return ",".join(f"{a}px:{n}" for a, n in self.limits) + f" (max {self.max_batch})"


class BatchQueue:
    """Thread-safe FIFO of jobs; `take` blocks for the oldest job and merges its compatible followers."""

    def __init__(self, rule: BatchRule):
        self.rule = rule
        self._jobs: deque = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def remove(self, job) -> bool:
        with self._cond:
            try:
                self._jobs.remove(job)
                return True
            except ValueError:
                return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    def take(self, timeout: float | None = None) -> list | None:
        """The next batch, oldest job first; None once closed (or when nothing came within `timeout`)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._jobs or self._closed, timeout):
                return None
            if self._closed:
                return None
            first = self._jobs.popleft()
            batch, rows = [first], first.denoise_rows
            limit = self.rule.limit_for(first)
            if limit > 1:
                key = first.batch_key()
                for other in list(self._jobs):
                    if rows >= limit:
                        break
                    if (other.batch_key() == key and self.rule.limit_for(other) > 1
                            and rows + other.denoise_rows <= limit):
                        self._jobs.remove(other)
                        batch.append(other)
                        rows += other.denoise_rows
            return batch
