"""Shape buckets warmed at startup, so the first real request of each shape does not pay for compilation."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("kleinserve_engine.warmup")

# 1024^2 edits with 1-4 references, 1024^2 text-to-image, 512^2 edit alone and as a batch of 4: the shapes
# issue 4 asks to be warm (a compiled graph is specialised to its batch size too).
DEFAULT_CUDA_BUCKETS = "1024x1024:1,1024x1024:2,1024x1024:3,1024x1024:4,1024x1024:0,512x512:1,512x512:1*4"


def parse_buckets(spec: str) -> list[tuple[int, int, int, int]]:
    """'WxH:N[*B],...' -> [(width, height, references, batch)]; 'none' or '' -> []."""
    if not spec or spec == "none":
        return []
    out = []
    for part in spec.split(","):
        size, _, rest = part.strip().partition(":")
        refs, _, batch = rest.partition("*")
        w, _, h = size.partition("x")
        try:
            bucket = (int(w), int(h), int(refs or 0), int(batch or 1))
        except ValueError:
            bucket = (1, 1, -1, 0)
        if bucket[0] % 16 or bucket[1] % 16 or not 0 <= bucket[2] <= 4 or bucket[3] < 1:
            raise ValueError(f"bad warm-up bucket {part!r}: want WxH:N[*B], multiples of 16, N in 0..4, B >= 1")
        out.append(bucket)
    return out


def warm(engine, buckets: list[tuple[int, int, int, int]], steps: int = 4) -> float:
    """Runs one request per bucket (twice, so the second run proves no recompile); returns seconds spent."""
    from PIL import Image

    from .pipeline import Job
    from .preprocess import Reference

    t0 = time.perf_counter()
    denoiser = getattr(engine, "denoiser", None)
    fp = getattr(engine, "fastpath", None)
    shared_batch_graph = (denoiser is not None and denoiser.compiled and denoiser.opts.compile_scope == "blocks") or (
        fp is not None and (fp.compile_vae or fp.compile_text_encoder))
    if buckets and shared_batch_graph and all(b[3] == 1 for b in buckets):
        # dynamo gives a batch of one its own graph; one batch of two compiles the graph every larger batch shares
        # (the blocks', the VAE decoder's, the text encoder's), so no batch formed after ready waits on a compile
        w, h, n, _ = min(buckets, key=lambda b: b[0] * b[1])
        buckets = [*buckets, (w, h, n, 2)]
    for b, (w, h, n, batch) in enumerate(buckets):
        refs = [Reference(Image.new("RGB", (w, h), (127, 127, 127)), f"warmup-{w}x{h}-{i}") for i in range(n)]
        for _ in range(2):
            # a prompt of its own per bucket and image: a batch's prompts miss the cache together, so the text
            # encoder runs at the batch's size too
            jobs = [Job(prompt=f"warm-up {b}.{k}", refs=refs, seeds=[k], width=w, height=h, steps=steps, output_format="jpeg")
                    for k in range(batch)]
            for res in engine.run_batch(jobs):
                if isinstance(res, Exception):
                    raise RuntimeError(f"warm-up of {w}x{h} with {n} references, batch {batch} failed: {res}")
        log.info("warmed %dx%d with %d references, batch %d (%.1fs so far)", w, h, n, batch, time.perf_counter() - t0)
    if buckets and denoiser is not None and denoiser.compiled and hasattr(engine, "adapters"):
        from .lora.warmup import warm_lora

        # the graphs with adapters (all rows alike, rows mixed); the regional compile shares them across shapes
        w, h, n, _ = min(buckets, key=lambda b: b[0] * b[1])
        warm_lora(engine, w, h, [Reference(Image.new("RGB", (w, h), (127, 127, 127)), f"warmup-lora-{i}") for i in range(n)], steps)
        log.info("warmed the LoRA graphs at %dx%d (%.1fs so far)", w, h, time.perf_counter() - t0)
    # warm-up entries must not crowd real prompts and references out of the caches
    engine.prompt_cache.clear()
    engine.ref_cache.clear()
    return time.perf_counter() - t0
