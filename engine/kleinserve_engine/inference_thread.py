"""The single inference thread: loads the model, warms it up, then runs batches from the batch queue.

torch releases the GIL inside its kernels, so the asyncio loop stays responsive while this thread computes.
What runs together is batcher.py's decision; this thread only takes the next batch the moment it is free. It is
free once a batch's pixels are decoded: the engine's encoder threads encode the images and deliver each answer.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Callable

from .batcher import BatchQueue, BatchRule

log = logging.getLogger("kleinserve_engine.inference_thread")


class InferenceThread(threading.Thread):
    def __init__(self, startup: Callable[[], object], on_result: Callable[[object, object], None],
                 on_started: Callable[[object, BaseException | None], None], rule: BatchRule):
        super().__init__(name="kleinserve-inference", daemon=True)
        self._startup = startup
        self._on_result = on_result
        self._on_started = on_started
        self.queue = BatchQueue(rule)
        self.engine = None

    def submit(self, job) -> None:
        self.queue.put(job)

    def remove(self, job) -> bool:
        return self.queue.remove(job)

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    def stop(self) -> None:
        self.queue.close()

    def run(self) -> None:
        try:
            self.engine = self._startup()
        except BaseException as exc:  # reported to the server, which decides how to exit
            self._on_started(None, exc)
            return
        self._on_started(self.engine, None)
        try:
            while (batch := self.queue.take()) is not None:
                try:
                    answers = self.engine.start_batch(batch)
                except BaseException as exc:  # start_batch already isolates failures; this is the last line of defence
                    log.exception("batch crashed")
                    answers = [_failed(exc) for _ in batch]
                for job, answer in zip(batch, answers):
                    answer.add_done_callback(lambda f, job=job: self._deliver(job, f))
        finally:
            self.engine.close()  # the encodes already handed off finish and deliver before this thread ends

    def _deliver(self, job, answer: Future) -> None:
        try:
            result = answer.result()
        except BaseException as exc:  # still an answer: no request is left waiting
            result = exc
        self._on_result(job, result)


def _failed(exc: BaseException) -> Future:
    f: Future = Future()
    f.set_exception(exc)
    return f
