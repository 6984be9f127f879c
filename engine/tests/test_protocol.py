"""Engine protocol v1 against the real `serve` process on the tiny model (one process for this module)."""

import asyncio
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import EngineProcess, random_image
from kleinserve_engine.client import EngineClient

OOM_PROMPT = "please run out of memory"


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    eng = EngineProcess(["--model", str(tiny_dir), "--listen", "tcp:127.0.0.1:0",
                         "--max-batch", "4", "--data-dir", str(data)], env={"KLEINSERVE_TEST_OOM_PROMPT": OOM_PROMPT})
    assert eng.wait_ready()["status"] == "ready"
    yield eng
    eng.stop()


def run(coro):
    return asyncio.run(coro)


async def session(server, fn):
    c = await EngineClient.connect(server.address)
    try:
        return await fn(c)
    finally:
        await c.close()


def rgb8(img):
    return {"format": "rgb8", "width": img.width, "height": img.height}, img.tobytes()


def png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"format": "png"}, buf.getvalue()


def gen(prompt="a fox", images=(), **kw):
    specs, blobs = [s for s, _ in images], [b for _, b in images]
    return {"op": "generate", "prompt": prompt, "images": specs, "seed": 1, **kw}, blobs


def test_listening_line_and_health(server):
    assert server.listening["event"] == "listening" and server.address.startswith("tcp:127.0.0.1:")
    h, _, _ = run(session(server, lambda c: c.call({"op": "health"})))
    assert h["ok"] and h["status"] == "ready" and h["device"] == "cpu" and h["dtype"] == "float32"
    assert h["limits"]["min_side"] == 64 and h["limits"]["max_aspect"] == 8 and h["limits"]["max_images"] == 4
    assert h["queue_depth"] == 0 and h["error"] is None


def test_generate_with_rgb8_and_png_references(server):
    a, b = random_image(150, 100, 1), random_image(96, 96, 2)
    h, blobs, progress = run(session(server, lambda c: c.call(*gen(images=[rgb8(a), png(b)], output_format="png", progress=True))))
    assert h["op"] == "result" and h["ok"], h
    assert h["images"] == [{"width": 144, "height": 96, "content_type": "image/png", "nsfw": False, "nsfw_score": None}]
    assert h["safety_checked"] is False  # no checker configured
    assert Image.open(io.BytesIO(blobs[0])).size == (144, 96)
    assert set(h["timings"]) == {"queue_ms", "text_encode_ms", "vae_encode_ms", "denoise_ms", "decode_ms", "image_encode_ms", "total_ms"}
    assert h["seeds"] == [1] and h["cache"]["refs"] == ["miss", "miss"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4] and all(p["steps"] == 4 for p in progress)
    assert all(p["step_ms"] >= 0 and p["elapsed_ms"] > 0 for p in progress)


def test_same_request_twice_is_byte_identical_and_cached(server):
    req = gen(prompt="identical", images=[rgb8(random_image(128, 128, 3))], seed=99, output_format="jpeg", output_quality=90)

    async def twice(c):
        return await c.call(*req), await c.call(*req)
    (h1, b1, _), (h2, b2, _) = run(session(server, twice))
    assert b1[0] == b2[0]
    assert h2["cache"] == {"prompt": "hit", "refs": ["hit"]}


def test_text_to_image_defaults_and_num_images(server):
    h, blobs, _ = run(session(server, lambda c: c.call({"op": "generate", "prompt": "t2i", "width": 64, "height": 80,
                                                        "num_images": 2, "seed": 5, "output_format": "webp"})))
    assert h["seeds"] == [5, 6] and len(blobs) == 2 and blobs[0].startswith(b"RIFF")
    h, _, _ = run(session(server, lambda c: c.call({"op": "generate", "prompt": "random seed", "seed": None,
                                                    "width": 64, "height": 64})))
    assert isinstance(h["seeds"][0], int) and 0 <= h["seeds"][0] < 2**53


def test_concurrent_requests_on_one_connection_share_a_batch(server):
    img = random_image(64, 64, 4)

    async def many(c):
        reqs = [gen(prompt=f"prompt {i}", images=[rgb8(img)], seed=i) for i in range(3)]
        reqs.append(gen(prompt="other shape", images=[rgb8(random_image(80, 64, 5))], seed=4))
        return await asyncio.gather(*[c.call(*r) for r in reqs])
    heads = [h for h, _, _ in run(session(server, many))]
    assert [h["op"] for h in heads] == ["result"] * 4
    assert [h["seeds"] for h in heads] == [[0], [1], [2], [4]]
    assert max(h["batch_size"] for h in heads[:3]) > 1  # they arrived together and shared a batch
    assert heads[3]["batch_size"] == 1 and heads[3]["images"][0]["width"] == 80


def test_a_failing_request_fails_alone(server):
    img = random_image(64, 64, 4)

    async def many(c):
        reqs = [gen(prompt="fine", images=[rgb8(img)], seed=1), gen(prompt=OOM_PROMPT, images=[rgb8(img)], seed=2),
                gen(prompt="also fine", images=[rgb8(img)], seed=3)]
        return await asyncio.gather(*[c.call(*r) for r in reqs])
    heads = [h for h, _, _ in run(session(server, many))]
    assert [h["op"] for h in heads] == ["result", "error", "result"]
    assert heads[1]["error"]["code"] == "OUT_OF_MEMORY"
    h, _, _ = run(session(server, lambda c: c.call(*gen(prompt="after the failure", width=64, height=64))))
    assert h["op"] == "result"


async def expect_error(c, header, blobs=(), code="INVALID_REQUEST"):
    h, _, _ = await c.call(header, blobs)
    assert h["op"] == "error" and h["ok"] is False and h["error"]["code"] == code, h
    return h["error"]


def test_bad_requests_get_structured_errors(server):
    async def bad(c):
        small = random_image(50, 100, 6)
        errs = {
            "no prompt": await expect_error(c, {"op": "generate"}),
            "tiny image": await expect_error(c, *gen(images=[rgb8(small)])),
            "aspect": await expect_error(c, *gen(images=[rgb8(random_image(64, 640, 7))])),
            "width": await expect_error(c, *gen(width=100, height=64)),
            "only width": await expect_error(c, *gen(width=64)),
            "steps": await expect_error(c, *gen(steps=0)),
            "format": await expect_error(c, *gen(output_format="gif")),
            "blobs": await expect_error(c, {"op": "generate", "prompt": "x", "images": [{"format": "png"}]}),
            "op": await expect_error(c, {"op": "explode"}),
            "version": await expect_error(c, {"op": "health", "v": 2}, code="UNSUPPORTED_VERSION"),
            "seed": await expect_error(c, *gen(seed=-1)),
        }
        # header blob sizes that do not add up to the body
        await c.send({"v": 1, "id": "mismatch", "op": "generate", "prompt": "x", "blobs": [10]}, [b"12345"])
        h, _ = await c.next("mismatch")
        errs["sum"] = h["error"]
        return errs
    errs = run(session(server, bad))
    assert errs["no prompt"]["field"] == "prompt"
    assert errs["tiny image"]["field"] == "images[0]"
    assert errs["aspect"]["field"] == "images[0]" and "aspect ratio" in errs["aspect"]["message"]
    assert errs["width"]["field"] == "width" and "multiple of 16" in errs["width"]["message"]
    assert errs["only width"]["field"] == "height"
    assert errs["steps"]["field"] == "steps" and errs["format"]["field"] == "output_format"
    assert errs["blobs"]["field"] == "blobs" and errs["op"]["field"] == "op" and errs["seed"]["field"] == "seed"
    assert errs["sum"]["field"] == "blobs"


def test_bad_frames_never_crash_the_engine(server):
    async def frames(c):
        raw = b"{not json"
        await c.send_raw(struct.pack(">II", len(raw), 0) + raw)
        h, _ = await c.next(None)
        assert h["error"]["code"] == "INVALID_REQUEST" and h["id"] is None
        await c.send({"v": 1, "id": 7, "op": "health"})  # id must be a string
        h, _ = await c.next(None)
        assert h["error"]["field"] == "id"
        health, _, _ = await c.call({"op": "health"})  # same connection still works
        assert health["status"] == "ready"
        # a frame over the size limit closes this connection only
        await c.send_raw(struct.pack(">II", 2 * 1024 * 1024, 0))
        h, _ = await c.next(None)
        assert h["error"]["code"] == "INVALID_REQUEST"
        h, _ = await c.next(None)
        assert h is None  # closed
    run(session(server, frames))

    async def disconnect_mid_request():
        c = await EngineClient.connect(server.address)
        await c.send({"v": 1, "id": "gone", **gen(prompt="nobody listens", width=64, height=64)[0]})
        await c.close()
    run(disconnect_mid_request())
    h, _, _ = run(session(server, lambda c: c.call({"op": "health"})))
    assert h["status"] == "ready"


def test_cancel_running_and_queued_requests(server):
    async def cancel(c):
        long = {"v": 1, "id": "long", **gen(prompt="slow", width=320, height=320, steps=50, progress=True)[0]}
        queued = {"v": 1, "id": "queued", **gen(prompt="queued", width=64, height=64)[0]}
        await c.send(long)
        first, _ = await c.next("long")
        assert first["op"] == "progress"
        await c.send(queued)
        await asyncio.sleep(0.25)  # queued is waiting for the busy inference thread
        ack_q, _, _ = await c.call({"op": "cancel", "target": "queued"})
        ack_l, _, _ = await c.call({"op": "cancel", "target": "long"})
        ack_unknown, _, _ = await c.call({"op": "cancel", "target": "never-sent"})
        while True:
            h, _ = await c.next("long")
            if h["op"] != "progress":
                break
        hq, _ = await c.next("queued")
        return ack_q, ack_l, ack_unknown, h, hq
    ack_q, ack_l, ack_unknown, h_long, h_queued = run(session(server, cancel))
    assert ack_q["canceled"] is True and ack_l["canceled"] is True and ack_unknown["canceled"] is False
    assert h_long["error"]["code"] == "CANCELED" and h_queued["error"]["code"] == "CANCELED"


def test_metrics_are_prometheus_text(server):
    h, blobs, _ = run(session(server, lambda c: c.call({"op": "metrics"})))
    text = blobs[0].decode()
    assert h["ok"] and h["blobs"] == [len(blobs[0])]
    for name in ("kleinserve_engine_requests_total", "kleinserve_engine_batch_size_bucket",
                 "kleinserve_engine_stage_seconds_bucket", "kleinserve_engine_cache_hits_total",
                 "kleinserve_engine_cache_bytes", "kleinserve_engine_queue_depth"):
        assert name in text, name
    assert 'kleinserve_engine_stage_seconds_count{stage="denoise"}' in text


def test_health_reports_the_checkpoint_facts(server):
    h, _, _ = run(session(server, lambda c: c.call({"op": "health"})))
    info = h["model_info"]
    assert info["is_distilled"] is True and info["default_steps"] == 4 and info["max_steps"] == h["limits"]["max_steps"] == 50
    assert info["default_guidance"] == 1.0 and info["supports_guidance"] is False and info["supports_negative_prompt"] is False
    assert info["text_encoder"]["architecture"] == "Qwen3ForCausalLM" and info["text_encoder"]["layers"] == [9, 18, 27]
    assert h["safety"] == {"enabled": False, "allow_opt_out": True}


def test_distilled_checkpoint_refuses_guidance_it_would_drop(server):
    async def go(c):
        ok, _, _ = await c.call(*gen(width=64, height=64, guidance_scale=1.0, negative_prompt="", safety_checker=False))
        scale = await expect_error(c, *gen(width=64, height=64, guidance_scale=4.0))
        negative = await expect_error(c, *gen(width=64, height=64, negative_prompt="blurry"))
        return ok, scale, negative
    ok, scale, negative = run(session(server, go))
    assert ok["op"] == "result" and ok["safety_checked"] is False
    assert scale["field"] == "guidance_scale" and "distilled" in scale["message"]
    assert negative["field"] == "negative_prompt" and "distilled" in negative["message"]


def test_invalid_unicode_is_refused_alone_and_never_breaks_the_batch(server):
    # "\ud800" survives JSON decoding as a lone surrogate; the header travels as the ASCII escape
    async def go(c):
        # a request already running keeps the inference thread busy, so the good ones queue and batch together
        busy = {"v": 1, "id": "busy", **gen(prompt="keep busy", width=256, height=256, steps=12, progress=True)[0]}
        await c.send(busy)
        await c.next("busy")
        reqs = [gen(prompt=f"fine {i}", width=64, height=64, seed=i) for i in range(2)]
        reqs.insert(1, gen(prompt="broken \ud800 prompt", width=64, height=64))
        return await asyncio.gather(*[c.call(*r) for r in reqs])
    heads = [h for h, _, _ in run(session(server, go))]
    assert [h["op"] for h in heads] == ["result", "error", "result"]
    err = heads[1]["error"]
    assert err["code"] == "INVALID_REQUEST" and err["field"] == "prompt" and "invalid Unicode at character 7" in err["message"]
    assert "TypeError" not in err["message"] and "Traceback" not in err["message"]
    assert heads[0]["batch_size"] == heads[2]["batch_size"] == 2  # the good ones still ran together
