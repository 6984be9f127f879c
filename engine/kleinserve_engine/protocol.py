"""Engine protocol v1 framing and request validation (docs/engine-protocol.md is the authority).

frame = u32 BE header_len | u32 BE body_len | JSON header | body (header.blobs, back to back).
Pure Python on purpose: the server must answer health before torch is imported.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass

from .errors import InvalidRequest, UnsupportedVersion
from .lora.spec import parse_loras

VERSION = 1
MAX_HEADER = 1 << 20
MAX_BODY = 256 << 20
_PREFIX = struct.Struct(">II")

MAX_IMAGES = 4
MAX_STEPS = 50
MAX_NUM_IMAGES = 4
MAX_PROMPT_CHARS = 20000
MAX_SEED = 2**53
OUTPUT_FORMATS = ("jpeg", "png", "webp")


class FrameTooLarge(Exception):
    pass


@dataclass
class Frame:
    header: dict
    blobs: list[bytes]


def encode_frame(header: dict, blobs: list[bytes] | tuple = ()) -> bytes:
    header = dict(header)
    header.setdefault("v", VERSION)
    if blobs:
        header["blobs"] = [len(b) for b in blobs]
    raw = json.dumps(header, separators=(",", ":")).encode()
    body_len = sum(len(b) for b in blobs)
    return b"".join([_PREFIX.pack(len(raw), body_len), raw, *blobs])


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict | None, bytes] | None:
    """Returns (header or None if it is not a JSON object, body), or None at a clean end of stream."""
    try:
        prefix = await reader.readexactly(_PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    header_len, body_len = _PREFIX.unpack(prefix)
    if header_len > MAX_HEADER or body_len > MAX_BODY:
        raise FrameTooLarge(f"frame of {header_len} header / {body_len} body bytes exceeds {MAX_HEADER} / {MAX_BODY}")
    raw = await reader.readexactly(header_len)
    body = await reader.readexactly(body_len) if body_len else b""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, body
    return (header if isinstance(header, dict) else None), body


def split_blobs(header: dict, body: bytes) -> list[bytes]:
    sizes = header.get("blobs") or []
    if not isinstance(sizes, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
        raise InvalidRequest("blobs: must be an array of non-negative integers", "blobs")
    if sum(sizes) != len(body):
        raise InvalidRequest(f"blobs: lengths sum to {sum(sizes)} but the body has {len(body)} bytes", "blobs")
    out, at = [], 0
    for n in sizes:
        out.append(body[at : at + n])
        at += n
    return out


def check_version(header: dict) -> None:
    if header.get("v") != VERSION:
        raise UnsupportedVersion(f"protocol version {header.get('v')!r} is not supported; this engine speaks {VERSION}", "v")


def error_header(id_, code: str, message: str, field: str | None = None, reason: str | None = None) -> dict:
    err = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    if reason is not None:
        err["reason"] = reason
    return {"v": VERSION, "id": id_, "op": "error", "ok": False, "error": err}


def _text(h: dict, name: str, required: bool) -> str:
    v = h.get(name)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise InvalidRequest(f"{name}: must be a string", name)
    if len(v) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{name}: longer than {MAX_PROMPT_CHARS} characters", name)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's \ud800-style escapes decode to lone surrogates, which are not text
        raise InvalidRequest(f"{name}: invalid Unicode at character {exc.start} (an unpaired surrogate); send UTF-8 text",
                             name) from None
    return v


def _int(h: dict, name: str, lo: int, hi: int, default=None, nullable=False):
    v = h.get(name)
    if v is None:
        if nullable:
            return None
        if default is not None:
            return default
        raise InvalidRequest(f"{name}: required", name)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InvalidRequest(f"{name}: must be an integer in [{lo}, {hi}], got {v!r}", name)
    return v


@dataclass
class GenerateRequest:
    id: str
    prompt: str
    images: list[dict]
    blobs: list[bytes]
    seed: int | None
    steps: int
    guidance: float  # guidance_scale, as the checkpoint will apply it
    negative_prompt: str
    safety_checker: bool
    width: int | None
    height: int | None
    num_images: int
    output_format: str
    output_quality: int
    progress: bool
    loras: list = ()  # [lora.spec.LoraSpec]
    deterministic: bool = False  # run alone: the same input and seed give the same bytes whatever else is queued


def parse_generate(h: dict, blobs: list[bytes], max_output_pixels: int, model=None,
                   allow_safety_opt_out: bool = False) -> GenerateRequest:
    """`model` is the loaded checkpoint's model_family.ModelFacts: its step defaults and guidance rules."""
    from .guidance import request_guidance
    from .safety import check_opt_out

    prompt = _text(h, "prompt", required=True)
    negative_prompt = _text(h, "negative_prompt", required=False)
    images = h.get("images") or []
    if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        raise InvalidRequest("images: must be an array of objects", "images")
    if len(images) > MAX_IMAGES:
        raise InvalidRequest(f"images: at most {MAX_IMAGES} references, got {len(images)}", "images")
    if len(blobs) != len(images):
        raise InvalidRequest(f"blobs: {len(images)} images need {len(images)} blobs, got {len(blobs)}", "blobs")
    seed = _int(h, "seed", 0, MAX_SEED - 1, nullable=True)
    steps = _int(h, "steps", 1, model.max_steps if model else MAX_STEPS, default=model.default_steps if model else 4)
    guidance = request_guidance(h, model, negative_prompt)
    safety_checker = h.get("safety_checker", True)
    safety_checker = True if safety_checker is None else safety_checker
    if not isinstance(safety_checker, bool):
        raise InvalidRequest("safety_checker: must be a boolean", "safety_checker")
    check_opt_out(safety_checker, allow_safety_opt_out)
    width, height = h.get("width"), h.get("height")
    if (width is None) != (height is None):
        raise InvalidRequest("width/height: give both or neither", "width" if width is None else "height")
    if width is not None:
        for name in ("width", "height"):
            v = _int(h, name, 64, 8192)
            if v % 16:
                raise InvalidRequest(f"{name}: must be a multiple of 16, got {v}", name)
        width, height = int(width), int(height)
        if width * height > max_output_pixels:
            raise InvalidRequest(f"width: {width}x{height} exceeds {max_output_pixels} output pixels", "width")
    num_images = _int(h, "num_images", 1, MAX_NUM_IMAGES, default=1)
    if seed is not None and seed + num_images > MAX_SEED:
        raise InvalidRequest("seed: seed + num_images must stay below 2^53", "seed")
    fmt = h.get("output_format", "jpeg") or "jpeg"
    if fmt not in OUTPUT_FORMATS:
        raise InvalidRequest(f"output_format: must be one of {'|'.join(OUTPUT_FORMATS)}, got {fmt!r}", "output_format")
    quality = _int(h, "output_quality", 1, 100, default=95)
    progress = h.get("progress", False)
    if not isinstance(progress, bool):
        raise InvalidRequest("progress: must be a boolean", "progress")
    deterministic = h.get("deterministic", False)
    if not isinstance(deterministic, bool):
        raise InvalidRequest("deterministic: must be a boolean", "deterministic")
    loras = parse_loras(h.get("loras"))
    return GenerateRequest(
        id=h["id"], prompt=prompt, images=images, blobs=blobs, seed=seed, steps=steps, guidance=guidance,
        negative_prompt=negative_prompt, safety_checker=safety_checker,
        width=width, height=height, num_images=num_images, output_format=fmt, output_quality=quality, progress=progress,
        loras=loras, deterministic=deterministic,
    )
