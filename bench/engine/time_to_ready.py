"""Time-to-ready of `python -m kleinserve_engine serve`, cold (empty compile cache) then warm.

Writes random full-size klein-4B weights in diffusers layout to --model-dir if it holds no model (about 16 GB,
built by bench.py's builder), then starts the engine twice on one data dir and records, from process start,
when the socket listened and when health first said ready (after loading and warming the buckets). Right after
ready it sends requests of shapes the warm-up never ran (another aspect ratio, one image then two) and records
their latency against the same requests sent again: the difference is any compile stall after ready.
`--tiny` uses the tiny model instead: the CPU smoke mode. Results (JSON + markdown) are rewritten after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "engine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_random_model(out: Path) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    import bench
    from kleinserve_engine import tiny

    tokenizer, lm, transformer, vae = bench.build_components(torch.device("cuda"), torch.bfloat16, tiny_model=False)
    tokenizer.save_pretrained(out / "tokenizer")
    lm.save_pretrained(out / "text_encoder")
    transformer.save_pretrained(out / "transformer")
    vae.save_pretrained(out / "vae")
    FlowMatchEulerDiscreteScheduler.from_config(tiny.SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    index = json.loads(json.dumps({"_class_name": "Flux2KleinPipeline", "is_distilled": True}))
    for name, lib, cls in (("scheduler", "diffusers", "FlowMatchEulerDiscreteScheduler"), ("text_encoder", "transformers", "Qwen3ForCausalLM"),
                           ("tokenizer", "transformers", "Qwen2TokenizerFast"), ("transformer", "diffusers", "Flux2Transformer2DModel"),
                           ("vae", "diffusers", "AutoencoderKLFlux2")):
        index[name] = [lib, cls]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    del tokenizer, lm, transformer, vae
    torch.cuda.empty_cache()  # the engine started next needs this GPU memory


async def wait_ready(address: str, timeout: float) -> dict:
    from kleinserve_engine.client import EngineClient

    c = await EngineClient.connect(address)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            h, _, _ = await c.call({"op": "health"}, timeout=timeout)
            if h["status"] != "loading":
                return h
            await asyncio.sleep(0.05)
        raise TimeoutError("not ready in time")
    finally:
        await c.close()


async def unwarmed_requests(address: str, size: tuple[int, int], timeout: float) -> dict:
    """Latency of never-warmed shapes right after ready, then of the same shapes again (compiled by then)."""
    import numpy as np

    from kleinserve_engine.client import EngineClient

    w, h = size
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8).tobytes()
    spec = {"format": "rgb8", "width": w, "height": h}
    c = await EngineClient.connect(address)
    out = {}
    try:
        for attempt in ("first", "again"):
            for label, n in (("alone", 1), ("two_images", 2)):  # two images: a batch of two rows
                t0 = time.perf_counter()
                head, _, _ = await c.call({"op": "generate", "prompt": f"unwarmed {attempt} {label}", "images": [spec], "seed": 1,
                                           "num_images": n, "width": w, "height": h, "output_format": "jpeg"}, [img], timeout=timeout)
                if not head or not head.get("ok"):
                    raise RuntimeError(f"unwarmed request failed: {head}")
                out[f"{label}_{attempt}_s"] = time.perf_counter() - t0
    finally:
        await c.close()
    out["compile_stall_s"] = max(out["alone_first_s"] - out["alone_again_s"], out["two_images_first_s"] - out["two_images_again_s"])
    return out


def start_once(model: str, data_dir: Path, extra: list[str], timeout: float, unwarmed: tuple[int, int] | None = None) -> dict:
    sock = Path(tempfile.mkdtemp()) / "e.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kleinserve_engine", "serve", "--model", model, "--listen", f"unix:{sock}",
                             "--data-dir", str(data_dir), *extra], stdout=subprocess.PIPE, cwd=ROOT / "engine")
    try:
        listening = json.loads(proc.stdout.readline())
        t_listen = time.perf_counter() - t0
        health = asyncio.run(wait_ready(listening["address"], timeout))
        out = {"listening_s": t_listen, "ready_s": time.perf_counter() - t0, "status": health["status"], "device": health["device"]}
        if unwarmed and health["status"] == "ready":
            out["after_ready"] = asyncio.run(unwarmed_requests(listening["address"], unwarmed, timeout))
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def markdown(report: dict) -> str:
    lines = [f"# Engine time to ready — {report.get('device')}", "", f"{report['date']} · model {report['model']} · warm-up `{report['warmup']}`", "",
             "| start | listening (s) | ready (s) | unwarmed request first / again (s) | 2 images first / again (s) | compile stall (s) |",
             "|---|---|---|---|---|---|"]
    for run in ("cold", "warm"):
        r = report.get(run)
        if not r:
            continue
        a = r.get("after_ready", {})
        fmt = lambda k: f"{a[k]:.2f}" if k in a else "—"  # noqa: E731
        lines.append(f"| {run} compile cache | {r['listening_s']:.1f} | {r['ready_s']:.1f} | {fmt('alone_first_s')} / {fmt('alone_again_s')} | "
                     f"{fmt('two_images_first_s')} / {fmt('two_images_again_s')} | {fmt('compile_stall_s')} |")
    return "\n".join(lines + ["", f"Command: `{report['command']}`", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "klein-4b-random")
    ap.add_argument("--data-dir", type=Path, default=None, help="starts empty for the cold run (default: a new temp dir)")
    ap.add_argument("--warmup", default="auto")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    if args.tiny:
        model = "tiny"
        extra = ["--device", "cpu", "--warmup", "64x64:1" if args.warmup == "auto" else args.warmup]
    else:
        if not (args.model_dir / "model_index.json").is_file():
            write_random_model(args.model_dir)
        model, extra = str(args.model_dir), ["--warmup", args.warmup]
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="kleinserve-ttr-"))
    unwarmed = (96, 64) if args.tiny else (1024, 768)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": model, "warmup": args.warmup,
              "command": " ".join(["python", *sys.argv])}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "tiny-cpu" if args.tiny else None
    for run in ("cold", "warm"):
        report[run] = start_once(model, data_dir, extra, args.timeout, unwarmed)
        report["device"] = report[run]["device"]
        if name is None:
            import torch

            name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-") if torch.cuda.is_available() else "cpu"
        (args.out / f"engine-{name}-time-to-ready.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"engine-{name}-time-to-ready.md").write_text(markdown(report))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
