"""Errors sent to clients carry a code and our own words, never an exception's class, text or traceback."""

import asyncio
import logging

from conftest import make_job
from kleinserve_engine.errors import EngineError

LEAKY = "unsupported operand type(s) for +: 'Tensor' and 'str' in /opt/venv/lib/python3.11/site-packages/torch/x.py"


def assert_generic(err):
    message = err.message if isinstance(err, EngineError) else err["message"]
    for leak in ("TypeError", "Traceback", "/opt/venv", "site-packages", "Tensor"):
        assert leak not in message, message
    assert "internal engine error (ref " in message


def test_unexpected_failure_in_a_batch_is_generic_and_logged(engine, caplog):
    real = engine.denoiser

    def broken(*args):
        raise TypeError(LEAKY)

    engine.denoiser = broken
    try:
        with caplog.at_level(logging.ERROR, logger="kleinserve_engine.pipeline"):
            res = engine.run_batch([make_job([], seeds=[1], size=(64, 64), steps=1)])[0]
    finally:
        engine.denoiser = real
    assert isinstance(res, EngineError) and res.code == "INTERNAL"
    assert_generic(res)
    ref = res.message.split("ref ")[1].split(")")[0]
    # the detail is in the engine log, under the same reference
    assert any(ref in r.getMessage() and r.exc_info and LEAKY in str(r.exc_info[1]) for r in caplog.records)


class _Conn:
    def __init__(self):
        self.pending, self.sent = {}, []

    def send_error(self, id_, err):
        self.sent.append((id_, err))


def test_unexpected_failure_while_preparing_is_generic(tmp_path):
    from kleinserve_engine import protocol
    from kleinserve_engine.server import EngineServer, ServeConfig, _Pending

    server = EngineServer(ServeConfig(model="unused", listen="tcp:127.0.0.1:0", data_dir=tmp_path))

    def broken(p):
        raise TypeError(LEAKY)

    server._build_job = broken
    conn = _Conn()
    req = protocol.parse_generate({"id": "r1", "prompt": "x", "width": 64, "height": 64}, [], 1 << 22)

    async def go():
        server.loop = asyncio.get_running_loop()
        p = _Pending(conn, req)
        conn.pending["r1"] = p
        await server._prepare(p)

    try:
        asyncio.run(go())
    finally:
        server.pool.shutdown(wait=False)
    (id_, err), = conn.sent
    assert id_ == "r1" and err.code == "INTERNAL"
    assert_generic(err)


def test_unexpected_failure_handling_a_frame_answers_that_frame(tmp_path):
    from kleinserve_engine.server import EngineServer, ServeConfig

    server = EngineServer(ServeConfig(model="unused", listen="tcp:127.0.0.1:0", data_dir=tmp_path))

    def broken(id_):
        raise TypeError(LEAKY)

    server.health = broken
    conn = _Conn()
    try:
        server._dispatch(conn, {"v": 1, "id": "h1", "op": "health"}, b"")
    finally:
        server.pool.shutdown(wait=False)
    (id_, err), = conn.sent
    assert id_ == "h1" and err.code == "INTERNAL"
    assert_generic(err)
