"""What the inference thread no longer does: encode images, draw noise, wait for the GPU to report progress.

It runs a batch up to its decoded pixels and takes the next one; encoder threads answer the requests, the
preprocessing pool draws each request's noise, a watcher thread reports CUDA steps.
"""

import asyncio
import threading
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
import torch

from conftest import make_job
from kleinserve_engine import image_encoding
from kleinserve_engine.batcher import DEFAULT_BATCH_RULE, BatchRule
from kleinserve_engine.errors import Canceled, EngineError
from kleinserve_engine.inference_thread import InferenceThread
from kleinserve_engine.pipeline import Engine, JobResult
from kleinserve_engine.progress import ProgressWatcher


def test_the_next_batch_denoises_while_the_previous_one_is_still_encoding(model, monkeypatch):
    engine = Engine(model)
    first = make_job([], prompt="first", seeds=[1], size=(64, 64), steps=1, output_format="png")
    second = make_job([], prompt="second", seeds=[2], size=(80, 64), steps=1, output_format="jpeg")
    second_denoising = threading.Event()
    real_denoise, real_encode = engine._denoise, image_encoding.encode
    overlapped = []

    def denoise(jobs, *args):
        if second in jobs:
            second_denoising.set()
        return real_denoise(jobs, *args)

    def slow_encode(pixels, fmt, quality=95):
        if fmt == "png":  # the first batch's encode holds on until the second batch is denoising, or gives up
            overlapped.append(second_denoising.wait(timeout=20))
        return real_encode(pixels, fmt, quality)

    monkeypatch.setattr(engine, "_denoise", denoise)
    monkeypatch.setattr(image_encoding, "encode", slow_encode)
    answers, all_answered = {}, threading.Event()

    def on_result(job, result):
        answers[job.prompt] = result
        if len(answers) == 2:
            all_answered.set()

    thread = InferenceThread(lambda: engine, on_result, lambda e, exc: None, BatchRule.parse(DEFAULT_BATCH_RULE))
    thread.submit(first)
    thread.submit(second)  # another output size: a batch of its own, after the first
    thread.start()
    assert all_answered.wait(60)
    thread.stop()
    thread.join(30)
    assert overlapped == [True]
    assert all(isinstance(r, JobResult) for r in answers.values()), answers
    assert answers["first"].images[0].startswith(b"\x89PNG") and answers["second"].images[0].startswith(b"\xff\xd8")


def test_an_encode_failure_fails_only_its_request(model, monkeypatch):
    engine = Engine(model)
    real_encode = image_encoding.encode

    def encode(pixels, fmt, quality=95):
        if fmt == "webp":
            raise OSError("no space left on device")
        return real_encode(pixels, fmt, quality)

    monkeypatch.setattr(image_encoding, "encode", encode)
    bad = make_job([], prompt="bad", seeds=[1], size=(64, 64), steps=1, output_format="webp")
    good = make_job([], prompt="good", seeds=[2, 3], size=(64, 64), steps=1, output_format="png")
    res = engine.run_batch([bad, good])
    assert isinstance(res[0], EngineError) and res[0].code == "INTERNAL"
    assert isinstance(res[1], JobResult) and len(res[1].images) == 2
    assert res[1].batch_size == 3  # answered from the batch itself: an encode failure retries nothing


def test_a_request_canceled_after_its_last_step_is_answered_canceled_and_not_encoded(model, monkeypatch):
    engine = Engine(model)
    encoded, real_encode = [], image_encoding.encode
    monkeypatch.setattr(image_encoding, "encode", lambda p, fmt, q=95: encoded.append(fmt) or real_encode(p, fmt, q))
    late = make_job([], prompt="late", seeds=[1], size=(64, 64), steps=2, output_format="webp")
    mate = make_job([], prompt="mate", seeds=[2], size=(64, 64), steps=2, output_format="png")

    def cancel_at_the_last_step(info):
        if info["step"] == info["steps"]:
            late.canceled = True

    late.on_progress = cancel_at_the_last_step
    res = engine.run_batch([late, mate])
    assert isinstance(res[0], Canceled) and isinstance(res[1], JobResult)
    assert encoded == ["png"]


class _Event:
    """Stands in for a CUDA event: completes when the test says so."""

    def __init__(self, ms=0.0):
        self.ms, self.done = ms, threading.Event()

    def synchronize(self):
        assert self.done.wait(10)

    def elapsed_time(self, later):
        return later.ms - self.ms


class _Job:
    def __init__(self):
        self.enqueued_at, self.frames, self.threads = 0.0, [], []

    def on_progress(self, info):
        self.frames.append(info)
        self.threads.append(threading.current_thread().name)


def test_progress_watcher_reports_each_step_in_order_once_its_event_completes():
    watcher = ProgressWatcher()
    job = _Job()
    events = [_Event(0.0), _Event(12.5), _Event(30.0), _Event(31.0)]
    for step in (1, 2, 3):
        watcher.watch(events[step - 1], events[step], step, 3, [job])  # returns at once: nothing has completed
    reported = watcher.flush()
    assert job.frames == [] and not reported.done()
    events[1].done.set()
    events[2].done.set()
    with pytest.raises(FutureTimeout):  # step 3 has not completed yet
        reported.result(timeout=0.2)
    assert [f["step"] for f in job.frames] == [1, 2]
    events[3].done.set()
    reported.result(timeout=10)
    assert [(f["step"], f["steps"], f["step_ms"]) for f in job.frames] == [(1, 3, 12.5), (2, 3, 17.5), (3, 3, 1.0)]
    assert all(f["elapsed_ms"] > 0 for f in job.frames) and set(job.threads) == {"kleinserve-progress"}
    watcher.close()


async def _serving(model, tmp_path, fn):
    """The real EngineServer in this process on a fresh engine over the session's tiny model: no model load."""
    from kleinserve_engine.client import EngineClient
    from kleinserve_engine.server import EngineServer, ServeConfig

    engine = Engine(model)
    server = EngineServer(ServeConfig(model="tiny", listen="tcp:127.0.0.1:0", data_dir=tmp_path))
    server.inference._startup = lambda: engine
    address = await server.start()
    assert await server.load_done is None
    client = await EngineClient.connect(address)
    try:
        return await fn(server, engine, client)
    finally:
        await client.close()
        await server.close()


def test_noise_is_drawn_while_the_request_is_prepared_and_equals_the_per_seed_draw(model, tmp_path):
    drawn = []

    async def go(server, engine, client):
        real = engine.job_noise

        def job_noise(job):
            noise = real(job)
            drawn.append((threading.current_thread().name, job.seeds, noise))
            return noise

        engine.job_noise = job_noise
        h, blobs, _ = await client.call({"op": "generate", "prompt": "noise", "seed": 11, "num_images": 2,
                                         "width": 64, "height": 80, "steps": 1, "output_format": "png"})
        return h, blobs

    h, blobs = asyncio.run(_serving(model, tmp_path, go))
    assert h["op"] == "result" and h["seeds"] == [11, 12]
    (thread, seeds, noise), = drawn  # once, and not again when the batch ran
    assert thread.startswith("kleinserve-preprocess") and seeds == [11, 12]
    old = [torch.randn((1, 128, 5, 4), generator=torch.Generator("cpu").manual_seed(s), dtype=model.dtype) for s in seeds]
    assert torch.equal(noise, torch.cat(old))
    # the noise drawn ahead gives the bytes of the noise drawn when the batch runs
    alone = Engine(model).run_batch([make_job([], prompt="noise", seeds=[11, 12], size=(64, 80), steps=1, output_format="png")])[0]
    assert blobs == alone.images


def test_stopping_answers_every_request_the_running_batch_included(model, tmp_path):
    gate, entered = threading.Event(), threading.Event()

    async def go(server, engine, client):
        real = engine._denoise

        def held(jobs, *args):
            entered.set()
            assert gate.wait(30)
            return real(jobs, *args)

        engine._denoise = held
        await client.send({"v": 1, "id": "running", "op": "generate", "prompt": "running", "seed": 1, "width": 64, "height": 64, "steps": 1})
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        await client.send({"v": 1, "id": "queued", "op": "generate", "prompt": "queued", "seed": 2, "width": 64, "height": 64, "steps": 1})
        for _ in range(1500):  # prepared on the pool, then queued behind the held batch
            if server.queue_depth:
                break
            await asyncio.sleep(0.02)
        assert server.queue_depth == 1
        closing = asyncio.ensure_future(server.close())
        await asyncio.sleep(0)  # the queue is closed: the queued request will never run
        gate.set()
        await closing
        return (await client.next("running"))[0], (await client.next("queued"))[0]

    running, queued = asyncio.run(_serving(model, tmp_path, go))
    assert running["op"] == "result" and running["ok"], running
    assert queued["op"] == "error" and queued["error"]["code"] == "NOT_READY", queued
