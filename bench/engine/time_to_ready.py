"""Time-to-ready of `python -m kleinserve_engine serve`, cold (empty compile cache) then warm (issue 4 item 2).

Writes random full-size klein-4B weights in diffusers layout to --model-dir if it holds no model (about 16 GB,
built by bench.py's builder), then starts the engine twice on one data dir and records, from process start,
when the socket listened and when health first said ready (after loading and warming the buckets).
`--tiny` uses the tiny model instead: the CPU smoke mode.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
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


def start_once(model: str, data_dir: Path, extra: list[str], timeout: float) -> dict:
    sock = Path(tempfile.mkdtemp()) / "e.sock"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kleinserve_engine", "serve", "--model", model, "--listen", f"unix:{sock}",
                             "--data-dir", str(data_dir), *extra], stdout=subprocess.PIPE, cwd=ROOT / "engine")
    try:
        listening = json.loads(proc.stdout.readline())
        t_listen = time.perf_counter() - t0
        health = asyncio.run(wait_ready(listening["address"], timeout))
        return {"listening_s": t_listen, "ready_s": time.perf_counter() - t0, "status": health["status"], "device": health["device"]}
    finally:
        proc.terminate()
        proc.wait(30)


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
    runs = {"cold": start_once(model, data_dir, extra, args.timeout), "warm": start_once(model, data_dir, extra, args.timeout)}
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": model, "warmup": args.warmup,
              "command": " ".join(["python", *sys.argv]), **runs}
    print(json.dumps(report, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "tiny-cpu" if args.tiny else runs["cold"]["device"].replace(":", "")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"time-to-ready-{name}-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
