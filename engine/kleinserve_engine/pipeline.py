"""The engine's own FLUX.2 [klein] loop, batched over requests.

text encode -> reference VAE encode -> seeded noise -> Euler denoise of the noisy tokens -> VAE decode -> image encode.
Requests in one batch share output size, steps and reference shapes (see batcher.py) but keep their own prompt,
references and seed. Flux2KleinPipeline is the parity reference in tests only; nothing here calls it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import image_encoding, latents
from .caches import ByteLRU, tensor_bytes
from .errors import Canceled, EngineError, OutOfMemory, internal_error
from .fastpath import Denoiser, FastPathOptions, attention_context, make_deterministic, prepare, upload_image
from .guidance import GuidancePlan, uses_cfg
from .loading import LoadedModel
from .lora.rows import RowLora
from .lora.store import AdapterStore, LoraOptions
from .metrics import Metrics
from .preprocess import Reference
from .sampling import euler, sigmas, timestep
from .text_encoding import MAX_TOKENS, encode_prompts

log = logging.getLogger("kleinserve_engine.pipeline")

MiB = 1024 * 1024


@dataclass(eq=False)  # identity semantics: two equal-looking requests are still two requests
class Job:
    prompt: str
    refs: list[Reference]
    seeds: list[int]
    width: int
    height: int
    steps: int = 4
    guidance: float = 1.0  # guidance_scale; classifier-free guidance only on a base checkpoint and when > 1
    negative_prompt: str = ""
    safety_check: bool = True  # False: this request opted out of the safety checker
    output_format: str = "jpeg"
    output_quality: int = 95
    on_progress: Callable[[dict], None] | None = None
    canceled: bool = False
    enqueued_at: float = field(default_factory=time.perf_counter)
    context: object = None  # the server's handle for answering this job
    loras: list = field(default_factory=list)  # [(lora.adapter.Adapter, scale)]: any mix shares a batch
    # runs alone (batcher.py) and encodes its prompt alone, uncached: its bytes do not depend on its neighbours
    deterministic: bool = False

    def batch_key(self) -> tuple:
        # guidance is per row (guidance.py), so guided and unguided requests share a batch
        return (self.width, self.height, self.steps, tuple(r.size for r in self.refs))

    @property
    def num_images(self) -> int:
        return len(self.seeds)


@dataclass
class JobResult:
    images: list[bytes]
    pixels: list[np.ndarray]
    width: int
    height: int
    seeds: list[int]
    content_type: str
    timings: dict
    batch_size: int
    cache: dict
    safety: list[dict] | None = None  # per image {nsfw, nsfw_score}; None when no checker ran for this request


@dataclass
class EngineOptions:
    prompt_cache_mb: float = 256
    ref_cache_mb: float = 512
    fastpath: FastPathOptions | None = None
    # Test hook: a prompt that makes the denoise stage raise torch.OutOfMemoryError, to prove isolation.
    oom_prompt: str | None = None
    lora: LoraOptions | None = None
    safety: object = None  # safety.SafetyChecker run on every output image, or None
    deterministic: bool = False  # engine-wide: torch's deterministic algorithms (the server also batches nothing)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    def __init__(self, model: LoadedModel, options: EngineOptions | None = None, metrics: Metrics | None = None):
        self.model = model
        self.options = options or EngineOptions()
        self.metrics = metrics or Metrics()
        self.prompt_cache = ByteLRU("prompt", int(self.options.prompt_cache_mb * MiB))
        self.ref_cache = ByteLRU("reference", int(self.options.ref_cache_mb * MiB))
        fp = self.options.fastpath or FastPathOptions.for_device(model.device.type)
        self.fastpath = fp
        self.denoiser: Denoiser = prepare(model, fp)
        if self.options.deterministic:
            make_deterministic()
        self.adapters = AdapterStore(model.transformer, model.dtype, model.device, self.options.lora, self.metrics.registry)
        self.lora = RowLora(model.transformer, self.adapters, rank_multiple=16 if fp.compile else 1,
                            compiled=self.denoiser.compiled)

    # -- stages ---------------------------------------------------------------------------------------------
    def _cached(self, cache: ByteLRU, key):
        value = cache.get(key)
        (self.metrics.cache_hits if value is not None else self.metrics.cache_misses).labels(cache.name).inc()
        return value

    def prompt_embeddings(self, prompts: list[str], cached: bool = True) -> tuple[dict, dict]:
        """cached=False encodes every prompt afresh and stores nothing (a deterministic request)."""
        found, state = {}, {}
        for p in dict.fromkeys(prompts):
            hit = self._cached(self.prompt_cache, p) if cached else None
            state[p] = "hit" if hit is not None else "miss"
            if hit is not None:
                found[p] = hit
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            m = self.model
            embeds = encode_prompts(m.text_encoder, m.tokenizer, missing, m.text_layers, m.device, m.dtype)
            for i, p in enumerate(missing):
                # clone: a row view would pin the whole batch tensor in the cache
                e = embeds[i : i + 1].clone()
                found[p] = e
                if cached:
                    self.prompt_cache.put(p, e, tensor_bytes(e))
        return found, state

    def reference_latents(self, refs: list[Reference]) -> tuple[list[torch.Tensor], list[str]]:
        out, state = [], []
        vae = self.model.vae
        for ref in refs:
            lat = self._cached(self.ref_cache, ref.cache_key)
            state.append("hit" if lat is not None else "miss")
            if lat is None:
                pixels = upload_image(ref.image, self.model.device, vae.dtype)
                if self.fastpath.channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    lat = latents.encode_reference(vae, pixels)
                self.ref_cache.put(ref.cache_key, lat, tensor_bytes(lat))
            out.append(lat)
        return out, state

    def noise(self, seed: int, h: int, w: int) -> torch.Tensor:
        # Drawn on the CPU from the request's own generator: the same seed gives the same image on any device
        # and in any batch position.
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn((1, 128, h, w), generator=g, dtype=self.model.dtype)

    # -- the loop -------------------------------------------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> list[JobResult | EngineError]:
        """Runs jobs as one batch; if the batch fails, each job is retried alone so a failure stays its own."""
        try:
            return self._run(jobs)
        except Exception as exc:
            self._release_memory()
            if len(jobs) > 1:
                log.warning("batch of %d failed (%s: %s); retrying its requests one by one", len(jobs), type(exc).__name__, exc)
                return [self.run_batch([j])[0] for j in jobs]
            return [self._as_error(exc)]

    def _as_error(self, exc: Exception) -> EngineError:
        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, torch.OutOfMemoryError):
            return OutOfMemory(f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'allocation failed'}")
        return internal_error(exc, log, "request")

    def _release_memory(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run(self, jobs: list[Job]) -> list[JobResult | EngineError]:
        m = self.model
        dev = m.device
        start = time.perf_counter()
        results: dict[int, JobResult | EngineError] = {}
        for k, j in enumerate(jobs):
            if j.canceled:
                results[k] = Canceled("canceled before it started")
        live = [k for k in range(len(jobs)) if k not in results]
        if not live:
            return [results[k] for k in range(len(jobs))]
        first = jobs[live[0]]
        h, w, steps = first.height // 16, first.width // 16, first.steps

        with torch.inference_mode():
            embeds, prompt_state = self.prompt_embeddings([jobs[k].prompt for k in live] + [jobs[k].negative_prompt for k in live if self._guided(jobs[k])],
                                                          cached=not any(jobs[k].deterministic for k in live))
            _sync(dev)
            t_text = time.perf_counter()
            ref_lats, ref_state = {}, {}
            for k in live:
                ref_lats[k], ref_state[k] = self.reference_latents(jobs[k].refs)
            _sync(dev)
            t_vae = time.perf_counter()

            # one row per output image: (job index, seed)
            rows = [(k, s) for k in live for s in jobs[k].seeds]
            x = latents.pack(torch.cat([self.noise(s, h, w) for _, s in rows])).to(dev)
            text = torch.cat([embeds[jobs[k].prompt] for k, _ in rows])
            guidance = GuidancePlan.build([jobs[k].guidance for k, _ in rows],
                                          [embeds.get(jobs[k].negative_prompt) for k, _ in rows], m.is_distilled)
            ref_shapes = [tuple(t.shape[-2:]) for t in ref_lats[live[0]]]
            refs = None
            if ref_shapes:
                per_job = {k: torch.cat([latents.pack(t) for t in ref_lats[k]], dim=1) for k in live}
                refs = torch.cat([per_job[k] for k, _ in rows]).to(m.dtype)
            img_ids = latents.output_ids(h, w)
            if ref_shapes:
                img_ids = torch.cat([img_ids, latents.reference_ids(ref_shapes)])
            img_ids, txt_ids = img_ids.to(dev), latents.text_ids(MAX_TOKENS).to(dev)
            sig = sigmas(m.scheduler_config, steps, h * w).to(dev)
            n_noisy = h * w

            if self.options.oom_prompt is not None and any(jobs[k].prompt == self.options.oom_prompt for k in live):
                raise torch.OutOfMemoryError("simulated out-of-memory (test hook)")

            with self.lora.active([jobs[k].loras for k, _ in rows]):
                x, rows, text, refs, denoise_end = self._denoise(jobs, rows, x, text, refs, img_ids, txt_ids, sig, n_noisy, t_vae, guidance)
            for k in {k for k, _ in rows} ^ set(live):
                results[k] = Canceled("canceled while running")
            if not rows:
                return [results[k] for k in range(len(jobs))]

            pixels = latents.decode(m.vae, x.to(m.vae.dtype), h, w)
            u8 = latents.to_uint8(pixels).numpy()
        t_dec = time.perf_counter()
        checker = self.options.safety
        verdicts = checker.screen(u8, [jobs[k].safety_check for k, _ in rows]) if checker else [None] * len(rows)
        t_safety = time.perf_counter()
        self.metrics.batch_size.observe(len(rows))

        by_job: dict[int, list[int]] = {}
        for r, (k, _) in enumerate(rows):
            by_job.setdefault(k, []).append(r)
        for k, row_ids in by_job.items():
            job = jobs[k]
            refusal = checker.refusal([verdicts[r] for r in row_ids]) if checker else None
            if refusal is not None:
                results[k] = refusal
                continue
            t0 = time.perf_counter()
            files = [image_encoding.encode(u8[r], job.output_format, job.output_quality) for r in row_ids]
            t_enc = time.perf_counter()
            timings = {
                "queue_ms": (start - job.enqueued_at) * 1000,
                "text_encode_ms": (t_text - start) * 1000,
                "vae_encode_ms": (t_vae - t_text) * 1000,
                "denoise_ms": (denoise_end - t_vae) * 1000,
                "decode_ms": (t_dec - denoise_end) * 1000,
                "image_encode_ms": (t_enc - t0) * 1000,
                "total_ms": (t_enc - job.enqueued_at) * 1000,
            }
            if checker:
                timings["safety_check_ms"] = (t_safety - t_dec) * 1000
            timings = {key: round(v, 3) for key, v in timings.items()}
            results[k] = JobResult(
                images=files,
                pixels=[u8[r] for r in row_ids],
                width=job.width,
                height=job.height,
                seeds=list(job.seeds),
                content_type=image_encoding.CONTENT_TYPES[job.output_format],
                timings=timings,
                batch_size=len(rows),
                cache={"prompt": prompt_state[job.prompt], "refs": ref_state[k]},
                safety=[verdicts[r].as_dict() for r in row_ids] if verdicts[row_ids[0]] is not None else None,
            )
        self.metrics.observe_caches([self.prompt_cache, self.ref_cache])
        return [results[k] for k in range(len(jobs))]

    def _guided(self, job: Job) -> bool:
        return uses_cfg(self.model.is_distilled, job.guidance)

    def _denoise(self, jobs, rows, x, text, refs, img_ids, txt_ids, sig, n_noisy, t_begin, guidance: GuidancePlan):
        dev = self.model.device
        steps = len(sig) - 1
        want_progress = any(jobs[k].on_progress for k, _ in rows)
        last = t_begin
        with attention_context(self.fastpath):
            for i in range(steps):
                keep = [r for r, (k, _) in enumerate(rows) if not jobs[k].canceled]
                if len(keep) != len(rows):
                    # a canceled request leaves the batch at the step boundary; the others carry on unchanged
                    idx = torch.tensor(keep, device=dev, dtype=torch.long)
                    rows = [rows[r] for r in keep]
                    if not rows:
                        break
                    x, text = x.index_select(0, idx), text.index_select(0, idx)
                    self.lora.keep(idx)
                    guidance = guidance.select(keep)
                    refs = refs.index_select(0, idx) if refs is not None else None
                hidden = x if refs is None else torch.cat([x, refs], dim=1)
                self.lora.map_rows(guidance.denoiser_rows(x.shape[0]))
                v = guidance.velocity(self.denoiser, hidden.to(self.model.dtype), text, timestep(sig[i], x.shape[0], x.dtype),
                                      img_ids, txt_ids, n_noisy)
                x = euler(x, v, sig[i], sig[i + 1])
                if want_progress:
                    _sync(dev)
                    now = time.perf_counter()
                    for k in dict.fromkeys(k for k, _ in rows):
                        if jobs[k].on_progress:
                            jobs[k].on_progress({"step": i + 1, "steps": steps, "step_ms": round((now - last) * 1000, 3),
                                                 "elapsed_ms": round((now - jobs[k].enqueued_at) * 1000, 3)})
                    last = now
        _sync(dev)
        return x, rows, text, refs, time.perf_counter()
