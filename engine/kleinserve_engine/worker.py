"""The single inference thread: loads the model, warms it up, then runs batches in arrival order.

torch releases the GIL inside its kernels, so the asyncio loop stays responsive while this thread computes.
Batches of the same key that queued up while the thread was busy are merged (up to max_batch) when taken.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

log = logging.getLogger("kleinserve_engine.worker")


class Worker(threading.Thread):
    def __init__(self, startup: Callable[[], object], on_result: Callable[[object, object], None],
                 on_started: Callable[[object, BaseException | None], None], max_batch: int):
        super().__init__(name="kleinserve-inference", daemon=True)
        self._startup = startup
        self._on_result = on_result
        self._on_started = on_started
        self.max_batch = max_batch
        self._queue: deque[list] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.engine = None

    def submit(self, jobs: list) -> None:
        with self._cond:
            self._queue.append(list(jobs))
            self._cond.notify()

    def remove(self, job) -> bool:
        with self._cond:
            for batch in self._queue:
                if job in batch:
                    batch.remove(job)
                    if not batch:
                        self._queue.remove(batch)
                    return True
        return False

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(b) for b in self._queue)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _take(self) -> list | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            batch = self._queue.popleft()
            key = batch[0].batch_key()
            images = sum(j.num_images for j in batch)
            for other in list(self._queue):
                n = sum(j.num_images for j in other)
                if other[0].batch_key() == key and images + n <= self.max_batch:
                    self._queue.remove(other)
                    batch.extend(other)
                    images += n
            return batch

    def run(self) -> None:
        try:
            self.engine = self._startup()
        except BaseException as exc:  # reported to the server, which decides how to exit
            self._on_started(None, exc)
            return
        self._on_started(self.engine, None)
        while (batch := self._take()) is not None:
            try:
                results = self.engine.run_batch(batch)
            except BaseException as exc:  # run_batch already isolates failures; this is the last line of defence
                log.exception("batch crashed")
                results = [exc] * len(batch)
            for job, res in zip(batch, results):
                self._on_result(job, res)
