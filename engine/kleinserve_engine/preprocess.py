"""Reference images: decode, validate and resize them by BFL's rules before they reach the VAE.

Rules (BFL flux2 `sampling.py`, mirrored by diffusers): RGB; reject a side under 64 px or an aspect ratio over
8; downscale with Lanczos to a pixel cap, never upscale; centre-crop each side down to a multiple of 16.
Each reference keeps its own aspect ratio. The cap is `max_ref_pixels` (default 1024*1024 per reference, the
cap diffusers uses for any number of references; BFL allows 2024^2 for a single one, which costs ~4x the
attention). Configure with `serve --max-ref-pixels`.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import InvalidRequest

MIN_SIDE = 64
MAX_ASPECT = 8
MULTIPLE = 16
DEFAULT_MAX_REF_PIXELS = 1024 * 1024
MAX_DECODED_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs before decoding them
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Reference:
    image: Image.Image  # processed RGB, sides multiples of 16
    digest: str  # content hash of the input bytes and their declared format

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def cache_key(self) -> tuple:
        return (self.digest, self.image.size)


def decode(spec: dict, blob: bytes, field: str) -> Image.Image:
    fmt = spec.get("format")
    if fmt == "rgb8":
        w, h = spec.get("width"), spec.get("height")
        for name, v in (("width", w), ("height", h)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InvalidRequest(f"{field}.{name}: rgb8 needs a positive integer {name}", f"{field}.{name}")
        if w * h > MAX_DECODED_PIXELS:
            raise InvalidRequest(f"{field}: {w}x{h} exceeds {MAX_DECODED_PIXELS} pixels", field)
        if len(blob) != w * h * 3:
            raise InvalidRequest(f"{field}: rgb8 {w}x{h} needs {w * h * 3} bytes, got {len(blob)}", field)
        return Image.fromarray(np.frombuffer(blob, dtype=np.uint8).reshape(h, w, 3), "RGB")
    if fmt == "png":
        if not blob.startswith(PNG_MAGIC):
            raise InvalidRequest(f"{field}: not a PNG file", field)
        try:
            img = Image.open(io.BytesIO(blob), formats=["PNG"])
            if img.width * img.height > MAX_DECODED_PIXELS:
                raise InvalidRequest(f"{field}: {img.width}x{img.height} exceeds {MAX_DECODED_PIXELS} pixels", field)
            img.load()
        except InvalidRequest:
            raise
        except Exception as exc:
            raise InvalidRequest(f"{field}: PNG could not be decoded ({exc})", field) from None
        return img.convert("RGB")
    raise InvalidRequest(f"{field}.format: must be rgb8 or png, got {fmt!r}", f"{field}.format")


def fit(img: Image.Image, field: str, max_pixels: int = DEFAULT_MAX_REF_PIXELS) -> Image.Image:
    img = img.convert("RGB") if img.mode != "RGB" else img
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise InvalidRequest(f"{field}: {w}x{h} has a side under {MIN_SIDE} px", field)
    aspect = max(w / h, h / w)
    if aspect > MAX_ASPECT:
        raise InvalidRequest(f"{field}: aspect ratio {aspect:.1f} exceeds {MAX_ASPECT}", field)
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        img = img.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)
        w, h = img.size
    cw, ch = w // MULTIPLE * MULTIPLE, h // MULTIPLE * MULTIPLE
    if (cw, ch) != (w, h):
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    return img


def reference(spec: dict, blob: bytes, index: int, max_pixels: int = DEFAULT_MAX_REF_PIXELS) -> Reference:
    field = f"images[{index}]"
    digest = hashlib.blake2b(blob, digest_size=16, person=str(spec.get("format"))[:16].encode()).hexdigest()
    if spec.get("format") == "rgb8":
        digest += f":{spec.get('width')}x{spec.get('height')}"
    return Reference(image=fit(decode(spec, blob, field), field, max_pixels), digest=digest)


def to_tensor(img: Image.Image):
    """(1, 3, H, W) float32 in [-1, 1], the VAE's input range, in channels_last layout.

    channels_last is what an HWC image naturally is, and it is also the layout the reference pipeline hands the
    VAE; CPU convolutions round differently per layout, so keeping it makes parity bit-exact.
    """
    import torch

    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None].transpose(0, 3, 1, 2)) * 2.0 - 1.0
