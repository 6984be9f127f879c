"""`serve --model tiny-base` with a blurring safety checker that requests may opt out of, over the real protocol."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from conftest import EngineProcess
from kleinserve_engine.client import EngineClient


@pytest.fixture(scope="module")
def server(tiny_checker_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    # batches of up to 6 transformer rows: two guided requests (two rows each) and an unguided one fit in one
    eng = EngineProcess(["--model", "tiny-base", "--listen", "tcp:127.0.0.1:0", "--data-dir", str(data), "--safety-checker", str(tiny_checker_dir), "--safety-policy", "blur",
                         "--safety-threshold", "0", "--allow-safety-opt-out", "--batch-rule", "512x512:6", "--max-batch", "6"])
    assert eng.wait_ready(timeout=240)["status"] == "ready"
    yield eng
    eng.stop()


def call_all(server, *headers, behind_busy=False):
    async def go():
        c = await EngineClient.connect(server.address)
        try:
            if behind_busy:
                # a running request keeps the inference thread busy, so the others queue and are taken as one batch
                await c.send({"v": 1, "id": "busy", **gen(prompt="keep busy", width=256, height=256, steps=12,
                                                          guidance_scale=1, progress=True)})
                await c.next("busy")
            return await asyncio.gather(*[c.call(h) for h in headers])
        finally:
            await c.close()

    return asyncio.run(go())


def gen(**kw):
    return {"op": "generate", "prompt": "a lighthouse", "seed": 3, "width": 64, "height": 64, "steps": 2,
            "output_format": "png", **kw}


def pixels(blob) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def test_health_says_base_checkpoint_and_checker(server):
    (h, _, _), = call_all(server, {"op": "health"})
    info = h["model_info"]
    assert info["id"] == "tiny-base" and info["is_distilled"] is False
    assert (info["default_steps"], info["max_steps"], info["default_guidance"]) == (50, 100, 4.0)
    assert info["supports_guidance"] and info["supports_negative_prompt"] and h["limits"]["max_steps"] == 100
    assert info["text_encoder"]["id"] == "tiny-base/text_encoder"
    assert h["safety"]["enabled"] and h["safety"]["policy"] == "blur" and h["safety"]["allow_opt_out"] is True


def test_guided_requests_batch_with_unguided_ones_and_are_blurred_when_flagged(server):
    # five rows in all (a guided image is two): one batch under the fixture's rule of 6
    results = call_all(server, gen(guidance_scale=5.0, negative_prompt="fog"), gen(guidance_scale=1.0),
                       gen(guidance_scale=5.0, negative_prompt="fog", safety_checker=False), behind_busy=True)
    (guided, g_blobs, _), (plain, p_blobs, _), (clear, c_blobs, _) = results
    assert [h["op"] for h, _, _ in results] == ["result"] * 3, results
    assert guided["batch_size"] == plain["batch_size"] == clear["batch_size"] == 3
    assert guided["safety_checked"] and guided["images"][0]["nsfw"] is True and 0 <= guided["images"][0]["nsfw_score"] <= 1
    assert clear["safety_checked"] is False and clear["images"][0]["nsfw"] is False and clear["images"][0]["nsfw_score"] is None
    assert "safety_check_ms" in guided["timings"]
    # same request, checked (blurred) and opted out (untouched): the blur removes the detail
    detail = lambda p: np.abs(np.diff(p.astype(int), axis=1)).mean()  # noqa: E731
    assert detail(pixels(g_blobs[0])) < detail(pixels(c_blobs[0])) / 4


def test_guided_rows_count_against_the_batch_limit(server):
    # 4 guided images are 8 rows: over the rule's 6, so the second request waits for the next batch
    results = call_all(server, gen(guidance_scale=5.0, num_images=2), gen(guidance_scale=5.0, num_images=2), behind_busy=True)
    assert [h["op"] for h, _, _ in results] == ["result"] * 2, results
    assert [h["batch_size"] for h, _, _ in results] == [2, 2]


def test_base_defaults_and_refusals(server):
    results = call_all(server, gen(steps=None, progress=True), gen(guidance_scale=0.5), gen(guidance_scale=1, negative_prompt="x"),
                       gen(steps=101), gen(negative_prompt="\udcff"))
    (default, _, progress), *refused = results
    low, neg_without_cfg, steps, bad_unicode = [h for h, _, _ in refused]
    assert default["op"] == "result" and len(progress) == 50  # the base checkpoint's own default step count
    assert low["error"]["field"] == "guidance_scale" and neg_without_cfg["error"]["field"] == "negative_prompt"
    assert steps["error"]["field"] == "steps" and "[1, 100]" in steps["error"]["message"]
    assert bad_unicode["error"]["field"] == "negative_prompt" and "invalid Unicode" in bad_unicode["error"]["message"]
