"""Per-step progress that never makes the inference thread wait for the GPU.

On CUDA the denoise loop has only queued a step's kernels when it moves on to the next step; the step is done when
an event recorded after it completes. A watcher thread waits on those events in the order they were recorded and
reports each step then: one frame per step, in step order, `step_ms` from the GPU's own clock and `elapsed_ms`
from the host clock when the step was seen done. On the CPU a step is done when its call returns, so it is reported
at once on the calling thread (a callback that cancels a batch mate takes effect at the next step boundary).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

import torch

log = logging.getLogger("kleinserve_engine.progress")


def report(jobs, step: int, steps: int, step_ms: float, now: float) -> None:
    for job in jobs:
        job.on_progress({"step": step, "steps": steps, "step_ms": round(step_ms, 3),
                         "elapsed_ms": round((now - job.enqueued_at) * 1000, 3)})


class ProgressWatcher:
    """One thread reporting steps as their events complete. Events of one stream complete in the order they were
    recorded, so waiting on them one after the other keeps the frames in order."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, before, after, step: int, steps: int, jobs: list) -> None:
        """Reports `step` to `jobs` once event `after` has completed; returns at once."""
        self._ensure_thread()
        self._queue.put((before, after, step, steps, jobs))

    def flush(self) -> Future:
        """A future that resolves once every step watched so far has been reported: a result sent after it can
        never overtake its request's last progress frame."""
        done: Future = Future()
        self._ensure_thread()
        self._queue.put(done)
        return done

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kleinserve-progress", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, Future):
                item.set_result(None)
                continue
            before, after, step, steps, jobs = item
            try:
                after.synchronize()  # releases the GIL; a blocking-sync event sleeps instead of spinning
                report(jobs, step, steps, before.elapsed_time(after), time.perf_counter())
            except Exception:  # a lost progress frame must not take the watcher, and every later frame, with it
                log.exception("progress of step %d could not be reported", step)


class StepProgress:
    """The steps of one batch, reported to the jobs that asked for progress."""

    def __init__(self, device: torch.device, watcher: ProgressWatcher):
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self._watcher = watcher
        self._watched = False
        self._last = self._marker()

    def _marker(self):
        if self._stream is None:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True, blocking=True)
        event.record(self._stream)
        return event

    def step(self, step: int, steps: int, jobs: list) -> None:
        now = self._marker()
        if self._stream is None:
            report(jobs, step, steps, (now - self._last) * 1000, now)
        else:
            self._watcher.watch(self._last, now, step, steps, jobs)
            self._watched = True
        self._last = now

    def reported(self) -> Future | None:
        """None when every step is already reported (CPU, or no step watched)."""
        return self._watcher.flush() if self._watched else None
