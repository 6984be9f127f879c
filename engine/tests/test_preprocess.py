import io

import numpy as np
import pytest
from PIL import Image

from kleinserve_engine.errors import InvalidRequest
from kleinserve_engine.preprocess import decode, fit, reference


def rgb8(w, h, value=100):
    return {"format": "rgb8", "width": w, "height": h}, bytes([value]) * (w * h * 3)


def test_small_side_is_rejected_with_the_field():
    spec, blob = rgb8(63, 200)
    with pytest.raises(InvalidRequest) as e:
        reference(spec, blob, 2)
    assert e.value.field == "images[2]" and "64" in e.value.message


def test_extreme_aspect_is_rejected():
    spec, blob = rgb8(64, 600)
    with pytest.raises(InvalidRequest) as e:
        reference(spec, blob, 0)
    assert e.value.field == "images[0]" and "aspect ratio 9.4 exceeds 8" in e.value.message


def test_downscale_to_cap_keeps_aspect_and_crops_to_16():
    img = fit(Image.new("RGB", (3000, 2000)), "images[0]", max_pixels=1024 * 1024)
    w, h = img.size
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 1024 * 1024
    assert abs(w / h - 1.5) < 0.02


def test_never_upscales():
    assert fit(Image.new("RGB", (100, 70)), "x").size == (96, 64)


def test_png_and_rgba_become_rgb():
    buf = io.BytesIO()
    Image.new("RGBA", (80, 80), (10, 20, 30, 0)).save(buf, format="PNG")
    ref = reference({"format": "png"}, buf.getvalue(), 1)
    assert ref.image.mode == "RGB" and ref.size == (80, 80)


def test_bad_payloads_name_their_field():
    with pytest.raises(InvalidRequest, match="needs 30000 bytes") as e:
        decode({"format": "rgb8", "width": 100, "height": 100}, b"\0" * 10, "images[0]")
    assert e.value.field == "images[0]"
    with pytest.raises(InvalidRequest, match="not a PNG"):
        decode({"format": "png"}, b"GIF89a....", "images[1]")
    with pytest.raises(InvalidRequest, match="could not be decoded"):
        decode({"format": "png"}, b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "images[1]")
    with pytest.raises(InvalidRequest) as e:
        decode({"format": "jpeg"}, b"", "images[3]")
    assert e.value.field == "images[3].format"


def test_same_content_same_cache_key_across_formats_differs():
    a = reference(*rgb8(80, 80, 5), 0)
    b = reference(*rgb8(80, 80, 5), 1)
    c = reference(*rgb8(80, 80, 6), 0)
    assert a.cache_key == b.cache_key != c.cache_key
