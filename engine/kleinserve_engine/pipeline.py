"""The engine's own FLUX.2 [klein] loop, batched over requests.

text encode -> reference VAE encode -> seeded noise -> Euler denoise of the noisy tokens -> VAE decode -> image encode.
Requests in one batch share output size, steps and reference shapes (see batcher.py) but keep their own prompt,
references and seed. Flux2KleinPipeline is the parity reference in tests only; nothing here calls it.

The calling thread (the inference thread) runs a batch up to its decoded pixels and the safety classifier, and never
waits for the GPU before that: stage times are CUDA events (stage_clock.py), progress is reported by a watcher
thread (progress.py), and the pixels' copy to the host is the batch's one sync. Each request's image encoding then
runs on a small thread pool while the calling thread takes the next batch.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
from .progress import ProgressWatcher, StepProgress
from .sampling import euler, seeded_noise, sigmas, timestep
from .stage_clock import StageClock
from .text_encoding import MAX_TOKENS, encode_prompts
from .uploads import upload

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
    # (num_images, 128, height/16, width/16) from Engine.job_noise, drawn while the request is prepared (server.py)
    # so the inference thread does not; None: drawn when the batch runs
    noise: torch.Tensor | None = None

    def batch_key(self) -> tuple:
        # guidance is per row (guidance.py), so guided and unguided requests share a batch
        return (self.width, self.height, self.steps, tuple(r.size for r in self.refs))

    @property
    def num_images(self) -> int:
        return len(self.seeds)

    @property
    def denoise_rows(self) -> int:
        # request checks (guidance.request_guidance) let a scale above 1 through only where guidance runs, and a
        # guided image's unconditional pass is a second transformer row
        return self.num_images * (2 if self.guidance > 1 else 1)


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
    # image encoding (and the safety blur) threads: PIL releases the GIL while it encodes
    encode_threads: int = 2


@dataclass(eq=False)
class _Decoded:
    """A batch after the GPU: its pixels on the host, waiting for each request's images to be encoded."""

    jobs: list[Job]
    start: float  # host clock when the batch started
    answers: dict  # job index -> the answer already known (canceled, refused)
    rows: list = field(default_factory=list)  # (job index, seed) of each pixel row
    pixels: np.ndarray | None = None  # (rows, H, W, 3) uint8
    verdicts: list = field(default_factory=list)  # per row: safety.Verdict or None
    stage_ms: dict = field(default_factory=dict)  # the GPU stages' times, the same for every request of the batch
    safety_ms: float = 0.0
    prompt_state: dict = field(default_factory=dict)
    ref_state: dict = field(default_factory=dict)
    reported: Future | None = None  # resolves once every progress frame of the batch has been sent


def _resolved(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


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
        # the components as the fast path runs them (compiled VAE / text encoder, fused projections; weights shared)
        self.model = model = self.denoiser.model
        if self.options.deterministic:
            make_deterministic()
        self.adapters = AdapterStore(model.transformer, model.dtype, model.device, self.options.lora, self.metrics.registry)
        self.lora = RowLora(model.transformer, self.adapters, rank_multiple=16 if fp.compile else 1,
                            compiled=self.denoiser.compiled)
        self._encoders = ThreadPoolExecutor(max_workers=self.options.encode_threads, thread_name_prefix="kleinserve-encode")
        self._progress = ProgressWatcher()

    def close(self) -> None:
        """Lets the encodes already handed off finish and deliver their answers, then stops the helper threads."""
        self._encoders.shutdown(wait=True)
        self._progress.close()  # after the encodes: each waits for its batch's last progress frame

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

    def job_noise(self, job: Job) -> torch.Tensor:
        """The job's noise; on CUDA in pinned memory, so its upload does not block. Safe on any thread: the server
        draws it while it prepares the request."""
        return seeded_noise(job.seeds, job.height // 16, job.width // 16, self.model.dtype,
                            pin=self.model.device.type == "cuda")

    # -- the loop -------------------------------------------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> list[JobResult | EngineError]:
        """Runs jobs as one batch and waits for their answers."""
        return [self._outcome(f) for f in self.start_batch(jobs)]

    def start_batch(self, jobs: list[Job]) -> list[Future]:
        """Runs jobs as one batch up to their decoded pixels, hands each request's image encoding to the encoder
        threads and returns: one future per job, resolving to its JobResult or EngineError. If the batch fails,
        each job is retried alone so a failure stays its own."""
        try:
            batch = self._run(jobs)
        except Exception as exc:
            self._release_memory()
            if len(jobs) > 1:
                log.warning("batch of %d failed (%s: %s); retrying its requests one by one", len(jobs), type(exc).__name__, exc)
                return [self.start_batch([j])[0] for j in jobs]
            return [_resolved(self._as_error(exc))]
        return [_resolved(batch.answers[k]) if k in batch.answers and batch.reported is None
                else self._encoders.submit(self._finish, batch, k) for k in range(len(jobs))]

    def _outcome(self, future: Future) -> JobResult | EngineError:
        try:
            return future.result()
        except Exception as exc:  # _finish answers with errors as values; anything else is a bug, still answered
            return self._as_error(exc)

    def _as_error(self, exc: Exception) -> EngineError:
        if isinstance(exc, EngineError):
            return exc
        if isinstance(exc, torch.OutOfMemoryError):
            return OutOfMemory(f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'allocation failed'}")
        return internal_error(exc, log, "request")

    def _release_memory(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def _run(self, jobs: list[Job]) -> _Decoded:
        """The inference thread's part of a batch: everything up to the decoded pixels and the safety verdicts."""
        m = self.model
        dev = m.device
        start = time.perf_counter()
        clock = StageClock(dev)
        batch = _Decoded(jobs, start, {k: Canceled("canceled before it started") for k, j in enumerate(jobs) if j.canceled})
        live = [k for k in range(len(jobs)) if k not in batch.answers]
        if not live:
            return batch
        first = jobs[live[0]]
        h, w, steps = first.height // 16, first.width // 16, first.steps

        with torch.inference_mode():
            embeds, prompt_state = self.prompt_embeddings([jobs[k].prompt for k in live] + [jobs[k].negative_prompt for k in live if self._guided(jobs[k])],
                                                          cached=not any(jobs[k].deterministic for k in live))
            clock.mark("text")
            ref_lats, ref_state = {}, {}
            for k in live:
                ref_lats[k], ref_state[k] = self.reference_latents(jobs[k].refs)
            clock.mark("vae")

            # one row per output image: (job index, seed)
            rows = [(k, s) for k in live for s in jobs[k].seeds]
            noise = [jobs[k].noise if jobs[k].noise is not None else self.job_noise(jobs[k]) for k in live]
            x = latents.pack(torch.cat([upload(n, dev) for n in noise]))
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
            img_ids, txt_ids = upload(img_ids, dev), upload(latents.text_ids(MAX_TOKENS), dev)
            sig = upload(sigmas(m.scheduler_config, steps, h * w), dev)
            n_noisy = h * w

            if self.options.oom_prompt is not None and any(jobs[k].prompt == self.options.oom_prompt for k in live):
                raise torch.OutOfMemoryError("simulated out-of-memory (test hook)")

            with self.lora.active([jobs[k].loras for k, _ in rows]):
                x, rows, text, refs, batch.reported = self._denoise(jobs, rows, x, text, refs, img_ids, txt_ids, sig, n_noisy,
                                                                    clock, guidance)
            for k in {k for k, _ in rows} ^ set(live):
                batch.answers[k] = Canceled("canceled while running")
            if not rows:
                return batch

            u8 = latents.to_uint8(latents.decode(m.vae, x.to(m.vae.dtype), h, w))
            clock.mark("decode")
            batch.pixels = u8.cpu().numpy()  # the batch's one wait for the GPU: every mark above has completed
        batch.stage_ms = {"text_encode_ms": clock.ms("start", "text"), "vae_encode_ms": clock.ms("text", "vae"),
                          "denoise_ms": clock.ms("vae", "denoise"), "decode_ms": clock.ms("denoise", "decode")}
        batch.rows, batch.prompt_state, batch.ref_state = rows, prompt_state, ref_state
        checker = self.options.safety
        t_safety = time.perf_counter()
        # the classifier stays here: it is a batched GPU call, and its scores must be on the host to act on them
        batch.verdicts = checker.screen(batch.pixels, [jobs[k].safety_check for k, _ in rows]) if checker else [None] * len(rows)
        batch.safety_ms = (time.perf_counter() - t_safety) * 1000
        self.metrics.batch_size.observe(len(rows))
        if checker:
            for k in dict.fromkeys(k for k, _ in rows):
                refusal = checker.refusal([v for (j, _), v in zip(rows, batch.verdicts) if j == k])
                if refusal is not None:
                    batch.answers[k] = refusal
        self.metrics.observe_caches([self.prompt_cache, self.ref_cache])
        return batch

    def _finish(self, batch: _Decoded, k: int) -> JobResult | EngineError:
        """Encoder thread: job k's answer, given only after the batch's last progress frame has been sent."""
        if batch.reported is not None:
            batch.reported.result()
        if k in batch.answers:
            return batch.answers[k]
        job = batch.jobs[k]
        if job.canceled:  # canceled after its last step: no file is worth encoding
            return Canceled("canceled while running")
        try:
            return self._encode(batch, k)
        except Exception as exc:  # a failed encode fails this request only
            return self._as_error(exc)

    def _encode(self, batch: _Decoded, k: int) -> JobResult:
        job = batch.jobs[k]
        row_ids = [r for r, (j, _) in enumerate(batch.rows) if j == k]
        checker = self.options.safety
        t0 = time.perf_counter()
        images = [checker.apply(batch.pixels[r], batch.verdicts[r]) if checker else batch.pixels[r] for r in row_ids]
        t1 = time.perf_counter()
        files = [image_encoding.encode(img, job.output_format, job.output_quality) for img in images]
        t_enc = time.perf_counter()
        timings = {
            "queue_ms": (batch.start - job.enqueued_at) * 1000,
            **batch.stage_ms,
            "image_encode_ms": (t_enc - t1) * 1000,
            "total_ms": (t_enc - job.enqueued_at) * 1000,
        }
        if checker:
            timings["safety_check_ms"] = batch.safety_ms + (t1 - t0) * 1000  # the classifier's share and the blur
        verdicts = [batch.verdicts[r] for r in row_ids]
        return JobResult(
            images=files,
            pixels=images,
            width=job.width,
            height=job.height,
            seeds=list(job.seeds),
            content_type=image_encoding.CONTENT_TYPES[job.output_format],
            timings={key: round(v, 3) for key, v in timings.items()},
            batch_size=len(batch.rows),
            cache={"prompt": batch.prompt_state[job.prompt], "refs": batch.ref_state[k]},
            safety=[v.as_dict() for v in verdicts] if verdicts[0] is not None else None,
        )

    def _guided(self, job: Job) -> bool:
        return uses_cfg(self.model.is_distilled, job.guidance)

    def _denoise(self, jobs, rows, x, text, refs, img_ids, txt_ids, sig, n_noisy, clock: StageClock, guidance: GuidancePlan):
        dev = self.model.device
        steps = len(sig) - 1
        progress = StepProgress(dev, self._progress) if any(jobs[k].on_progress for k, _ in rows) else None
        with attention_context(self.fastpath):
            for i in range(steps):
                keep = [r for r, (k, _) in enumerate(rows) if not jobs[k].canceled]
                if len(keep) != len(rows):
                    # a canceled request leaves the batch at the step boundary; the others carry on unchanged
                    idx = upload(torch.tensor(keep, dtype=torch.long), dev)
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
                if progress is not None:
                    progress.step(i + 1, steps, [jobs[k] for k in dict.fromkeys(k for k, _ in rows) if jobs[k].on_progress])
        clock.mark("denoise")
        return x, rows, text, refs, progress.reported() if progress is not None else None
