"""Deterministic mode: the same input and seed give the same bytes whatever else is queued (real `serve` process)."""

import asyncio

import pytest

from conftest import EngineProcess, random_image
from kleinserve_engine.client import EngineClient


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    eng = EngineProcess(["--model", str(tiny_dir), "--listen", "tcp:127.0.0.1:0", "--max-batch", "4",
                         "--data-dir", str(tmp_path_factory.mktemp("data"))])
    assert eng.wait_ready()["status"] == "ready"
    yield eng
    eng.stop()


def rgb8(img):
    return {"format": "rgb8", "width": img.width, "height": img.height}, img.tobytes()


def gen(prompt, images=(), **kw):
    return {"op": "generate", "prompt": prompt, "images": [s for s, _ in images], "steps": 3, "output_format": "png", **kw}, \
        [b for _, b in images]


def test_a_deterministic_request_gives_the_same_bytes_alone_and_among_neighbours(server):
    img = random_image(64, 64, 7)
    det = gen("the same words", [rgb8(img)], seed=42, deterministic=True)

    async def go():
        c = await EngineClient.connect(server.address)
        try:
            alone = await c.call(*det)
            # keep the inference thread busy so that what follows queues: the neighbours batch, the
            # deterministic request must not; one neighbour shares its prompt, so that prompt's embedding is
            # cached from a batched encode by the time the deterministic request runs
            busy = {"v": 1, "id": "busy", **gen("keep busy", width=256, height=256, steps=12, progress=True)[0]}
            await c.send(busy)
            await c.next("busy")
            reqs = [gen("the same words" if i == 0 else f"neighbour {i}", [rgb8(img)], seed=i) for i in range(3)]
            crowd = await asyncio.gather(*[c.call(*r) for r in reqs], c.call(*det))
            return alone, crowd
        finally:
            await c.close()

    (alone_h, alone_b, _), crowd = asyncio.run(go())
    among_h, among_b, _ = crowd[-1]
    neighbours = [h for h, _, _ in crowd[:-1]]
    assert alone_h["ok"] and among_h["ok"] and all(h["ok"] for h in neighbours)
    assert max(h["batch_size"] for h in neighbours) >= 2  # batching did happen around it
    assert alone_h["batch_size"] == among_h["batch_size"] == 1
    assert among_b[0] == alone_b[0]  # byte-identical PNG


def test_deterministic_must_be_a_boolean(server):
    async def go():
        c = await EngineClient.connect(server.address)
        try:
            return await c.call(*gen("x", width=64, height=64, deterministic="yes"))
        finally:
            await c.close()

    h, _, _ = asyncio.run(go())
    assert h["ok"] is False and h["error"]["code"] == "INVALID_REQUEST" and h["error"]["field"] == "deterministic"


def test_the_engine_flag_batches_nothing_and_turns_on_torch_determinism():
    import torch

    from kleinserve_engine.fastpath import make_deterministic
    from kleinserve_engine.server import EngineServer, ServeConfig, limits

    cfg = ServeConfig(model="tiny", listen="tcp:127.0.0.1:0", max_batch=8, batch_rule="1024x1024:8", deterministic=True)
    srv = EngineServer(cfg)
    small = type("J", (), {"width": 64, "height": 64, "deterministic": False})()
    assert srv.inference.queue.rule.limit_for(small) == 1
    assert limits(cfg)["max_batch"] == 1 and limits(cfg)["deterministic"] is True
    try:
        make_deterministic()
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    finally:
        make_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # the defaults again: no recompile after
