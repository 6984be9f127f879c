"""The GPU run's first minute: the tiny model on the target device, eager and compiled, on one case.

Proves that the engine imports and runs with the machine's own torch (2.11 on the GPU image, not the 2.13 CPU
wheel it is developed on), that the regional compile agrees with eager (inductor within 1/255), that new batch sizes and aspect ratios do not recompile after the batch-1 and batch-2 warm-up, and
that a deterministic request gives the same bytes alone and among neighbours, and that the critical path's stage
timings (CUDA events on a GPU), per-step progress and pinned noise work. Writes engine-<card>-smoke.json/.md
after every check. Exit status 0 when eager and compiled both ran (the benchmark can work), 1 otherwise;
mismatches are reported as failed checks without stopping the benchmark stages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "engine"))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
from kleinserve_engine.fastpath import FastPathOptions, compiled_graphs  # noqa: E402
from kleinserve_engine.loading import load  # noqa: E402
from kleinserve_engine.pipeline import Engine, EngineOptions, Job  # noqa: E402
from kleinserve_engine.preprocess import Reference  # noqa: E402
from kleinserve_engine.tiny import make_tiny_model  # noqa: E402


def markdown(r) -> str:
    sw = r["software"]
    lines = [f"# Engine smoke — {r['machine']}", "",
             f"{r['date']} · torch {sw['torch']} · CUDA {sw['cuda']} · cuDNN {sw['cudnn']} · triton {sw['triton']} · "
             f"diffusers {sw['diffusers']} · transformers {sw['transformers']} · torchao {sw['torchao']}", "",
             f"Engine tests on this machine (pytest exit status): {r.get('pytest_rc', 'not run')}", "",
             "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {'ok' if c['ok'] else 'FAILED'} | {c['detail']} |" for c in r["checks"]]
    return "\n".join(lines + ["", f"Command: `{r['command']}`", ""])


def critical_path_checks(engine, job, run, device, check) -> None:
    """Stage timings (CUDA events on a GPU, the host clock elsewhere), progress frames and the noise drawn ahead."""
    clock = "CUDA events" if device.type == "cuda" else "host clock"
    frames = []
    try:
        engine.prompt_cache.clear()  # every stage does work: a cache hit leaves two marks with nothing between
        engine.ref_cache.clear()
        timed = job(seeds=(12,), prompt="timed", on_progress=lambda info: frames.append((threading.current_thread().name, info)))
        (res,), _ = run(engine, [timed])
        t = res.timings
        stages = ("text_encode_ms", "vae_encode_ms", "denoise_ms", "decode_ms", "image_encode_ms")
        parts = t["queue_ms"] + sum(t[k] for k in stages)
        # the GPU stages lie inside the host's interval, so the parts never exceed the total; what they leave out
        # (the pixels' copy, handing over to the encoder threads) is small
        ok = all(t.get(k, 0) > 0 for k in stages) and t["queue_ms"] >= 0 and 0.5 * t["total_ms"] <= parts <= t["total_ms"] + 0.01
        check(f"stage timings ({clock}) present, positive and within the total", ok,
              ", ".join(f"{k} {v}" for k, v in t.items()) + f"; stages sum {parts:.3f} ms")
    except Exception as exc:
        check(f"stage timings ({clock})", False, f"{type(exc).__name__}: {exc}")
    try:
        # on CUDA a watcher thread reports each step once its event completes; on the CPU the inference thread does
        want = "kleinserve-progress" if device.type == "cuda" else threading.current_thread().name
        steps = [info["step"] for _, info in frames]
        elapsed = [info["elapsed_ms"] for _, info in frames]
        step_sum = sum(info["step_ms"] for _, info in frames)
        ok = (steps == list(range(1, timed.steps + 1)) and all(info["steps"] == timed.steps for _, info in frames)
              and all(info["step_ms"] >= 0 for _, info in frames) and elapsed == sorted(elapsed) and elapsed[0] > 0
              and {name for name, _ in frames} == {want} and step_sum <= res.timings["denoise_ms"] + 0.01)
        check("progress: one frame per step, in order", ok,
              f"steps {steps}, step_ms sum {step_sum:.3f} (denoise {res.timings['denoise_ms']}), from {sorted({n for n, _ in frames})}")
    except Exception as exc:
        check("progress: one frame per step, in order", False, f"{type(exc).__name__}: {exc}")
    try:
        noise = engine.job_noise(job(seeds=(3, 4)))
        pinned = noise.is_pinned() if device.type == "cuda" else not noise.is_pinned()
        same = torch.equal(noise.to(device, non_blocking=True).cpu(), noise)
        check("noise drawn ahead: pinned on CUDA, uploads unchanged", pinned and same,
              f"pinned {noise.is_pinned()}, equal after upload {same}")
    except Exception as exc:
        check("noise drawn ahead", False, f"{type(exc).__name__}: {exc}")


def host_sync_check(engine, job, run, device, check, lora_dir: Path) -> None:
    """Counts the host waits a batch costs the inference thread, by the line that causes each (torch's sync debug
    mode): a batch with prompts to encode, references to encode and per-row LoRAs should wait once, for the decoded
    pixels. A wait inside text encoding comes at the batch's start, when the GPU has nothing queued (the previous
    batch's pixels were waited for), so it costs little and is listed apart (transformers' attention-mask code may
    make one); any other line is a stall to remove, listed for the next session. Off CUDA the same batch runs
    without the count, so the dry run still exercises it."""
    import contextlib
    import traceback
    import warnings

    from kleinserve_engine.lora.spec import LoraSpec
    from lora_bench import write_adapter

    sites: dict[str, int] = {}
    here = threading.current_thread()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message) or threading.current_thread() is not here:
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        ours = [f for f in frames if any(lib in f.filename for lib in ("kleinserve_engine", "diffusers", "transformers"))]
        f = (ours or frames)[-1]
        at_start = any(Path(fr.filename).name == "text_encoding.py" for fr in frames)
        key = f"{'batch start: ' if at_start else ''}{Path(f.filename).name}:{f.lineno} {f.line}"
        sites[key] = sites.get(key, 0) + 1

    @contextlib.contextmanager
    def counting():
        if device.type != "cuda":
            yield
            return
        saved = warnings.showwarning
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = saved

    name = "host syncs per batch (prompts, references, per-row LoRA): only the decoded pixels' copy"
    try:
        path = lora_dir / "smoke-lora.safetensors"
        write_adapter(engine.model.transformer, 4, 0, path, torch.float32)
        adapter = engine.adapters.adapter(LoraSpec(str(path), None, 1.0), 0)
        engine.prompt_cache.clear()
        engine.ref_cache.clear()
        jobs = [job(seeds=(21,), prompt="sync a"), job(seeds=(22,), prompt="sync b")]
        jobs[0].loras = [(adapter, 0.8)]
        with counting():
            run(engine, jobs)
        if device.type != "cuda":
            check(name, True, "the batch ran; the count needs CUDA (torch's sync debug mode)")
            return
        waits = sum(n for k, n in sites.items() if not k.startswith("batch start: "))
        check(name, waits <= 1, f"{waits} sync(s) past the batch start: " + "; ".join(f"{n}x {k}" for k, n in sites.items()))
    except Exception as exc:
        check(name, False, f"{type(exc).__name__}: {exc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--pytest-rc", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    report = bench.Report(args.out, f"engine-{bench.slug_for(device, False)}-smoke", {
        "machine": bench.machine(device), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "software": bench.software(), "pytest_rc": args.pytest_rc, "command": " ".join(["python", *sys.argv]), "checks": []})

    def check(name, ok, detail):
        report.data["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        save()
        print(f"smoke {name}: {'ok' if ok else 'FAILED'} {detail}", file=sys.stderr)

    def save():
        js, md = report.paths
        js.write_text(json.dumps(report.data, indent=2) + "\n")
        md.write_text(markdown(report.data))

    save()
    # float32 even on CUDA: the equality bounds are about compilation, not about bf16 rounding
    model = load(str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny")), device=args.device, dtype="float32")
    rng = np.random.default_rng(0)
    from PIL import Image

    img = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))

    def job(seeds=(11,), prompt="smoke", w=80, h=64, **kw):
        return Job(prompt=prompt, refs=[Reference(img, "smoke-ref")], seeds=list(seeds), width=w, height=h, steps=2,
                   output_format="png", **kw)

    def run(engine, jobs):
        t0 = time.perf_counter()
        out = engine.run_batch(jobs)
        for r in out:
            if isinstance(r, Exception):
                raise r
        return out, time.perf_counter() - t0

    ran = {"eager": False, "compiled": False}
    try:  # uint8 through pinned memory, normalised on the device: must equal the CPU float path exactly
        from kleinserve_engine.fastpath import upload_image
        from kleinserve_engine.preprocess import to_tensor

        up, ref_t = upload_image(img, device, torch.float32), to_tensor(img).to(device)
        cl = torch.channels_last
        check("reference upload (uint8, pinned) equals the float path",
              torch.equal(up, ref_t) and up.is_contiguous(memory_format=cl) == ref_t.is_contiguous(memory_format=cl),
              f"shape {tuple(up.shape)}, channels_last {up.is_contiguous(memory_format=cl)}")
    except Exception as exc:
        check("reference upload", False, f"{type(exc).__name__}: {exc}")
    try:
        eager = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device(args.device, compile=False)))
        (ref,), t = run(eager, [job()])
        ran["eager"] = True
        check("eager", True, f"{t:.2f}s, {ref.width}x{ref.height}")
    except Exception as exc:
        check("eager", False, f"{type(exc).__name__}: {exc}")
        return 1
    critical_path_checks(eager, job, run, device, check)
    host_sync_check(eager, job, run, device, check, Path(tempfile.mkdtemp()))

    for scope in ("blocks",):  # the whole-model compile is stage 2's ablation row; the smoke stays near a minute
        try:
            opts = FastPathOptions.for_device(args.device, compile=True, compile_backend=args.backend, compile_scope=scope)
            fast = Engine(model, EngineOptions(fastpath=opts))
            (res,), t = run(fast, [job()])
            diff = int(np.abs(res.pixels[0].astype(int) - ref.pixels[0].astype(int)).max())
            bound = 0 if args.backend == "aot_eager" else 1
            ran["compiled"] = ran["compiled"] or scope == "blocks"
            check(f"compiled ({scope}, {args.backend}) vs eager", diff <= bound, f"max abs pixel diff {diff}/255 (bound {bound}); first call {t:.2f}s")
            if scope == "blocks":
                run(fast, [job(seeds=(1, 2))])
                before = compiled_graphs()
                run(fast, [job(seeds=(1, 2, 3), w=64, h=96)])
                run(fast, [job(seeds=(4,), w=96, h=64)])
                check("no recompile for a new batch size or aspect", compiled_graphs() == before,
                      f"{compiled_graphs() - before} graphs compiled after the batch-1 and batch-2 warm-up")
        except Exception as exc:
            check(f"compiled ({scope}, {args.backend})", False, f"{type(exc).__name__}: {exc}")

    try:
        det = Engine(model, EngineOptions(fastpath=FastPathOptions.for_device(args.device, compile=False)))
        alone, _ = run(det, [job(seeds=(5,), prompt="same")])
        first = job(seeds=(5,), prompt="same", deterministic=True)
        mates = [job(seeds=(6 + i,), prompt=f"mate {i}") for i in range(2)]
        from kleinserve_engine.batcher import DEFAULT_BATCH_RULE, BatchQueue, BatchRule

        queue = BatchQueue(BatchRule.parse(DEFAULT_BATCH_RULE))
        for j in (first, *mates):  # as if all three queued while the inference thread was busy
            queue.put(j)
        groups = [queue.take() for _ in range(2)]
        outs = {}
        for g in groups:
            for j, r in zip(g, run(det, g)[0]):
                outs[id(j)] = r
        same = outs[id(first)].images[0] == alone[0].images[0]
        check("deterministic request: same bytes alone and among neighbours", same,
              f"groups {[len(g) for g in groups]}; batch size of the deterministic one {outs[id(first)].batch_size}")
    except Exception as exc:
        check("deterministic request", False, f"{type(exc).__name__}: {exc}")
    return 0 if all(ran.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
