"""asyncio server for engine protocol v1: many connections, many concurrent requests per connection.

The loop does I/O, validation and batching; image decoding and resizing, and drawing each request's noise, run in a
small thread pool; inference runs on the single inference thread, image encoding on the engine's encoder threads.
torch is imported only off the loop, after the socket is bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol
from .batcher import DEFAULT_BATCH_RULE, BatchRule
from .errors import Canceled, EngineError, InvalidRequest, ModelUnavailable, NotReady, SetupRefused, internal_error
from .lora.spec import MAX_LORAS, LoraOptions
from .metrics import Metrics
from .preprocess import DEFAULT_MAX_REF_PIXELS, MAX_ASPECT, MIN_SIDE
from .inference_thread import InferenceThread

log = logging.getLogger("kleinserve_engine.server")

# How long a stopping engine waits for the batch it is running and that batch's encodes: under the 5 s the
# supervisor gives SIGTERM before it kills the process.
CLOSE_GRACE_S = 3.0
# Startup failures whose message is ours to show (health, the failed event, stderr); anything else may carry
# library internals and is shown as a generic load failure with the details in the log.
STARTUP_REFUSALS = (ModelUnavailable, SetupRefused)


@dataclass
class ServeConfig:
    model: str  # a directory, a Hugging Face repo id, "tiny" or "tiny-base"
    listen: str
    tiny_dir: Path | None = None
    device: str = "auto"
    dtype: str | None = None
    max_batch: int = 4
    batch_rule: str = DEFAULT_BATCH_RULE  # batcher.py: largest batch per output size
    prompt_cache_mb: float = 256
    ref_cache_mb: float = 512
    max_ref_pixels: int = DEFAULT_MAX_REF_PIXELS
    max_output_pixels: int = 4 * 1024 * 1024
    compile: bool | None = None
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    compile_scope: str = "blocks"
    precision: str = "bf16"
    # fastpath.FastPathOptions; None = the device's default
    compile_vae: bool | None = None
    compile_text_encoder: bool | None = None
    cudnn_benchmark: bool | None = None
    fuse_qkv: bool | None = None
    fp8_attention: bool = False
    warmup: str = "auto"
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("KLEINSERVE_DATA", ".data")))
    oom_prompt: str | None = None
    threads: int = 0  # CPU intra-op threads; 0 = 1 on CPU (see cli.py), torch's default on CUDA
    exit_with_stdin: bool = False  # exit when stdin reaches EOF: the supervising parent died
    deterministic: bool = False  # every request alone, torch's deterministic algorithms (fastpath.make_deterministic)
    lora: LoraOptions | None = None
    safety: object = None  # safety.SafetyOptions when --safety-checker is given
    allow_safety_opt_out: bool = False


class _Pending:
    """One generate request from receipt to answer."""

    def __init__(self, conn: "_Connection", req: protocol.GenerateRequest):
        self.conn = conn
        self.req = req
        self.job = None
        self.answered = False
        self.canceled = False
        self.received = time.perf_counter()


class _Connection:
    def __init__(self, server: "EngineServer", reader, writer):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.pending: dict[str, _Pending] = {}
        self.closed = False

    def send(self, header: dict, blobs=()) -> None:
        if self.closed or self.writer.is_closing():
            return
        # one write per frame: frames from concurrent requests never interleave
        self.writer.write(protocol.encode_frame(header, blobs))

    def send_error(self, id_, err: EngineError) -> None:
        self.send(protocol.error_header(id_, err.code, err.message, err.field, getattr(err, "reason", None)))


def limits(cfg: ServeConfig, facts=None) -> dict:
    return {
        "max_ref_pixels": cfg.max_ref_pixels, "min_side": MIN_SIDE, "max_aspect": MAX_ASPECT,
        "max_images": protocol.MAX_IMAGES, "max_steps": facts.max_steps if facts else protocol.MAX_STEPS,
        "max_output_pixels": cfg.max_output_pixels, "max_batch": 1 if cfg.deterministic else cfg.max_batch,
        "deterministic": cfg.deterministic,
        "max_loras": MAX_LORAS, "max_lora_rank": (cfg.lora or LoraOptions()).max_rank,
    }


class EngineServer:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.status = "loading"
        self.error: str | None = None
        self.device = None
        self.dtype = None
        self.facts = None  # model_family.ModelFacts once loaded
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kleinserve-preprocess")
        self.inference = InferenceThread(self._startup, self._on_result_thread, self._on_started_thread,
                             BatchRule.parse(cfg.batch_rule, 1 if cfg.deterministic else cfg.max_batch))
        self.connections: set[_Connection] = set()
        self.load_done: asyncio.Future | None = None
        self._server = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> str:
        self.loop = asyncio.get_running_loop()
        self.load_done = self.loop.create_future()
        kind, _, where = self.cfg.listen.partition(":")
        if kind == "unix":
            if os.path.exists(where):
                os.unlink(where)  # a stale socket from a previous run would make bind fail
            self._server = await asyncio.start_unix_server(self._handle, path=where, limit=2**20)
            address = f"unix:{where}"
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            self._server = await asyncio.start_server(self._handle, host=host or "127.0.0.1", port=int(port), limit=2**20)
            h, p = self._server.sockets[0].getsockname()[:2]
            address = f"tcp:{h}:{p}"
        else:
            raise ValueError(f"--listen must be unix:PATH or tcp:HOST:PORT, got {self.cfg.listen!r}")
        self.inference.start()
        return address

    async def close(self) -> None:
        self.inference.stop()
        if self._server:
            self._server.close()
        if self.status == "ready" and self.inference.is_alive():
            # the running batch and its encodes answer through this loop, so it must keep running meanwhile
            await self.loop.run_in_executor(None, self.inference.join, CLOSE_GRACE_S)
        writers = []
        for conn in list(self.connections):
            for p in list(conn.pending.values()):  # never ran: answered rather than left waiting
                self._answer(p, NotReady("the engine is shutting down"))
            conn.writer.close()
            writers.append(conn.writer)
        if writers:  # closing flushes what was written; give the answers a moment to leave before the loop ends
            await asyncio.wait([asyncio.ensure_future(_closed(w)) for w in writers], timeout=1.0)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _startup(self):
        """Worker thread: load, prepare and warm the model. Returns the Engine."""
        from .fastpath import FastPathOptions, configure_compile_cache, load_mega_cache, save_mega_cache

        cache_dir = configure_compile_cache(self.cfg.data_dir)
        from .loading import load
        from .pipeline import Engine, EngineOptions
        from .warmup import DEFAULT_CUDA_BUCKETS, parse_buckets, warm

        t0 = time.perf_counter()
        source = self.cfg.model
        if source in ("tiny", "tiny-base"):
            from .tiny import ensure_tiny_model

            # built here, after the socket is bound, through the same loader as real weights
            tiny_dir = self.cfg.tiny_dir or self.cfg.data_dir / "tiny-model"
            if source == "tiny-base":
                tiny_dir = tiny_dir.with_name(tiny_dir.name + "-base")
            source = str(ensure_tiny_model(tiny_dir, distilled=source == "tiny"))
        checker = None
        if self.cfg.safety is not None:  # first: a missing checker should not wait for the main model to load
            from .loading import resolve_device
            from .safety import SafetyChecker

            checker = SafetyChecker.load(self.cfg.safety, resolve_device(self.cfg.device))
            checker.attach_metrics(self.metrics.registry)
        model = load(source, device=self.cfg.device, dtype=self.cfg.dtype, model_id=self.cfg.model)
        self.device, self.dtype, self.facts = model.device, model.dtype, model.facts
        if model.device.type == "cpu":
            import torch

            # OpenMP workers spin while they wait; on a small shared CPU more threads than free cores turn that
            # spinning into a 5-10x slowdown, so the CPU engine runs single-threaded unless told otherwise.
            torch.set_num_threads(self.cfg.threads or 1)
        fp = FastPathOptions.for_device(model.device.type, compile=self.cfg.compile, compile_backend=self.cfg.compile_backend,
                                        compile_mode=self.cfg.compile_mode, compile_scope=self.cfg.compile_scope,
                                        precision=self.cfg.precision, compile_vae=self.cfg.compile_vae,
                                        compile_text_encoder=self.cfg.compile_text_encoder,
                                        cudnn_benchmark=self.cfg.cudnn_benchmark, fuse_qkv=self.cfg.fuse_qkv,
                                        fp8_attention=self.cfg.fp8_attention)
        engine = Engine(model, EngineOptions(prompt_cache_mb=self.cfg.prompt_cache_mb, ref_cache_mb=self.cfg.ref_cache_mb,
                                             fastpath=fp, oom_prompt=self.cfg.oom_prompt, safety=checker,
                                             lora=self.cfg.lora, deterministic=self.cfg.deterministic), self.metrics)
        spec = self.cfg.warmup
        if spec == "auto":
            spec = DEFAULT_CUDA_BUCKETS if model.device.type == "cuda" else "none"
        buckets = parse_buckets(spec)
        if buckets:
            loaded = fp.compile and load_mega_cache(cache_dir)
            log.info("warming %d shape buckets (compile cache %s)", len(buckets), "loaded" if loaded else "cold")
            warm(engine, buckets)
            if fp.compile:
                save_mega_cache(cache_dir)
        self.metrics.warmup_seconds.set(time.perf_counter() - t0)
        log.info("ready after %.1fs", time.perf_counter() - t0)
        return engine

    def _on_started_thread(self, engine, exc) -> None:
        self.loop.call_soon_threadsafe(self._on_started, engine, exc)

    def _on_started(self, engine, exc) -> None:
        if exc is None:
            self.status = "ready"
            self.metrics.ready.set(1)
        else:
            self.status = "failed"
            # health and NOT_READY answers carry this: only our own messages, never an exception's internals
            self.error = str(exc) if isinstance(exc, STARTUP_REFUSALS) else "the model could not be loaded (see the engine log)"
        if not self.load_done.done():
            self.load_done.set_result(exc)

    # -- connections ----------------------------------------------------------------------------------------
    async def _handle(self, reader, writer) -> None:
        conn = _Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            while True:
                try:
                    frame = await protocol.read_frame(reader)
                except protocol.FrameTooLarge as exc:
                    self.metrics.frames_rejected.labels("INVALID_REQUEST").inc()
                    conn.send(protocol.error_header(None, "INVALID_REQUEST", str(exc)))
                    break
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    break
                if frame is None:
                    break
                self._dispatch(conn, *frame)
                await writer.drain()
        finally:
            conn.closed = True
            self.connections.discard(conn)
            for pending in list(conn.pending.values()):
                self._cancel(pending)  # nobody is left to read the answer
            try:
                await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            writer.close()

    def _dispatch(self, conn: _Connection, header: dict | None, body: bytes) -> None:
        if header is None:
            self.metrics.frames_rejected.labels("INVALID_REQUEST").inc()
            return conn.send_error(None, InvalidRequest("header: not a JSON object", "header"))
        id_ = header.get("id")
        if not isinstance(id_, str):
            self.metrics.frames_rejected.labels("INVALID_REQUEST").inc()
            return conn.send_error(None, InvalidRequest("id: must be a string", "id"))
        try:
            protocol.check_version(header)
            op = header.get("op")
            if op == "health":
                conn.send(self.health(id_))
            elif op == "metrics":
                self.metrics.queue_depth.set(self.queue_depth)
                self.metrics.in_flight.set(self.in_flight)
                conn.send({"v": 1, "id": id_, "op": "metrics", "ok": True}, [self.metrics.render()])
            elif op == "generate":
                self._generate(conn, header, body)
            elif op == "cancel":
                conn.send({"v": 1, "id": id_, "op": "cancel", "ok": True, "canceled": self._cancel_target(conn, header)})
            else:
                raise InvalidRequest(f"op: unknown operation {op!r}", "op")
        except EngineError as err:
            self.metrics.frames_rejected.labels(err.code).inc()
            conn.send_error(id_, err)
        except Exception as exc:  # a bug in handling one frame answers that frame and keeps the connection
            err = internal_error(exc, log, f"frame {id_!r}")
            self.metrics.frames_rejected.labels(err.code).inc()
            conn.send_error(id_, err)

    def health(self, id_) -> dict:
        return {
            "v": 1, "id": id_, "op": "health", "ok": True, "status": self.status,
            "model": self.cfg.model,
            "device": str(self.device) if self.device is not None else None,
            "dtype": str(self.dtype).replace("torch.", "") if self.dtype is not None else None,
            "queue_depth": self.queue_depth, "in_flight": self.in_flight, "error": self.error,
            "limits": limits(self.cfg, self.facts),
            "model_info": self.facts.as_dict() if self.facts is not None else None,
            "safety": self.safety_info(),
        }

    def safety_info(self) -> dict:
        s = self.cfg.safety
        if s is None:
            return {"enabled": False, "allow_opt_out": True}
        return {"enabled": True, "model": s.model, "policy": s.policy, "threshold": s.threshold,
                "unsafe_labels": s.unsafe_labels, "allow_opt_out": s.allow_opt_out}

    @property
    def queue_depth(self) -> int:
        return self.inference.queue_depth

    @property
    def in_flight(self) -> int:
        return sum(len(c.pending) for c in self.connections)

    # -- generate -------------------------------------------------------------------------------------------
    def _generate(self, conn: _Connection, header: dict, body: bytes) -> None:
        if self.status != "ready":
            raise NotReady(f"model is {self.status}" + (f": {self.error}" if self.error else ""))
        if header["id"] in conn.pending:
            raise InvalidRequest(f"id: request {header['id']!r} is already in flight on this connection", "id")
        blobs = protocol.split_blobs(header, body)
        # opting out of a checker that is not configured changes nothing, so it is never refused
        opt_out_ok = self.cfg.safety is None or self.cfg.safety.allow_opt_out
        req = protocol.parse_generate(header, blobs, self.cfg.max_output_pixels, model=self.facts,
                                      allow_safety_opt_out=opt_out_ok)
        pending = _Pending(conn, req)
        conn.pending[req.id] = pending
        asyncio.ensure_future(self._prepare(pending))

    async def _prepare(self, p: _Pending) -> None:
        try:
            job = await self.loop.run_in_executor(self.pool, self._build_job, p)
        except EngineError as err:
            return self._answer(p, err)
        except Exception as exc:
            return self._answer(p, internal_error(exc, log, f"preparing {p.req.id!r}"))
        if p.canceled:
            return self._answer(p, Canceled("canceled before it started"))
        p.job = job
        self.inference.submit(job)

    def _build_job(self, p: _Pending):
        from .pipeline import Job
        from .preprocess import reference

        req = p.req
        refs = [reference(spec, blob, i, self.cfg.max_ref_pixels) for i, (spec, blob) in enumerate(zip(req.images, req.blobs))]
        if req.width is not None:
            width, height = req.width, req.height
        elif refs:
            width, height = refs[0].size
        else:
            width, height = 1024, 1024
        seed = req.seed if req.seed is not None else secrets.randbelow(protocol.MAX_SEED - req.num_images)
        on_progress = None
        if req.progress:
            def on_progress(info, p=p):
                self._from_thread(self._progress, p, info)
        job = Job(prompt=req.prompt, refs=refs, seeds=[seed + i for i in range(req.num_images)], width=width, height=height,
                  steps=req.steps, guidance=req.guidance, negative_prompt=req.negative_prompt,
                  safety_check=req.safety_checker, output_format=req.output_format,
                  output_quality=req.output_quality, on_progress=on_progress,
                  loras=self.inference.engine.adapters.resolve(req.loras) if req.loras else [],
                  deterministic=req.deterministic or self.cfg.deterministic)
        job.enqueued_at = p.received
        job.context = p
        job.noise = self.inference.engine.job_noise(job)  # here rather than on the inference thread
        return job

    def _progress(self, p: _Pending, info: dict) -> None:
        if not p.answered and not p.canceled:
            p.conn.send({"v": 1, "id": p.req.id, "op": "progress", **info})

    def _on_result_thread(self, job, result) -> None:
        self._from_thread(self._answer, job.context, result)

    def _from_thread(self, callback, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the process is exiting and no connection is left to answer
            log.debug("dropped a late answer or progress frame after the loop closed")

    def _answer(self, p: _Pending, result) -> None:
        if p.answered:
            return
        p.answered = True
        p.conn.pending.pop(p.req.id, None)
        if isinstance(result, BaseException):
            err = result if isinstance(result, EngineError) else internal_error(result, log, f"request {p.req.id!r}")
            self.metrics.requests.labels(err.code.lower()).inc()
            return p.conn.send_error(p.req.id, err)
        self.metrics.requests.labels("ok").inc()
        self.metrics.observe_timings(result.timings)
        header = {
            "v": 1, "id": p.req.id, "op": "result", "ok": True,
            "images": [{"width": result.width, "height": result.height, "content_type": result.content_type,
                        **(verdict or {"nsfw": False, "nsfw_score": None})}
                       for verdict in (result.safety or [None] * len(result.images))],
            "safety_checked": result.safety is not None,
            "seeds": result.seeds, "timings": result.timings, "batch_size": result.batch_size, "cache": result.cache,
        }
        p.conn.send(header, result.images)

    # -- cancel ---------------------------------------------------------------------------------------------
    def _cancel_target(self, conn: _Connection, header: dict) -> bool:
        target = header.get("target")
        if not isinstance(target, str):
            raise InvalidRequest("target: must be the id of a generate request", "target")
        pending = conn.pending.get(target)
        if pending is None:  # the control plane may cancel from another connection
            found = [c.pending[target] for c in self.connections if target in c.pending]
            pending = found[0] if len(found) == 1 else None
        if pending is None or pending.answered:
            return False
        self._cancel(pending)
        return True

    def _cancel(self, p: _Pending) -> None:
        p.canceled = True
        job = p.job
        if job is None:
            return  # still being prepared: _prepare answers CANCELED when it finishes
        job.canceled = True
        if self.inference.remove(job):
            self._answer(p, Canceled("canceled while queued"))
        # otherwise it is running: the inference thread drops it at the next step boundary and answers CANCELED


async def serve(cfg: ServeConfig) -> int:
    # stdout carries only the protocol's JSON event lines; anything a library prints goes to stderr
    events, sys.stdout = sys.stdout, sys.stderr
    server = EngineServer(cfg)
    address = await server.start()
    events.write(json.dumps({"event": "listening", "address": address}) + "\n")
    events.flush()
    stop = asyncio.Event()
    if cfg.exit_with_stdin:
        _stop_on_stdin_eof(server.loop, stop)
    await asyncio.wait([server.load_done, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        await server.close()
        return 0
    exc = server.load_done.result()
    if exc is not None:
        if not isinstance(exc, STARTUP_REFUSALS):
            log.error("model could not be loaded", exc_info=exc)
        message = str(exc) if isinstance(exc, STARTUP_REFUSALS) else "the model could not be loaded (the engine log on stderr has the details)"
        events.write(json.dumps({"event": "failed", "code": "MODEL_UNAVAILABLE", "message": message}) + "\n")
        events.flush()
        print(f"kleinserve-engine: {message}", file=sys.stderr)
        await server.close()
        return 2
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            server.loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    await server.close()
    return 0


async def _closed(writer) -> None:
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def _stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The supervisor holds our stdin open and never writes to it. EOF means it is gone, even by kill -9, and an
    engine without its control plane only holds GPU memory that the next engine will need."""
    fd = sys.stdin.fileno()

    def on_readable() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            stop.set()

    loop.add_reader(fd, on_readable)
