"""What per-request LoRA adapters cost the engine, at 1024² on the full-size klein-4B architecture (random weights).

Cases, each written to JSON + markdown as soon as it is measured (a run killed at its limit keeps what it has):
  base            no adapter, one 1-reference edit                          (the reference latency)
  lora-rR         the same request with one cached rank-R adapter on every block Linear (overhead vs base)
  first-use-rR    an adapter never seen before, from a local file: read + sha256 + convert + copy to the GPU,
                  and the first request's latency minus the cached one (the page cache is dropped for the file first)
  switch-rR       requests alternating between two cached adapters (vs always the same one)
  mixed-rR        a batch of 4: adapters A, B, none, A (per-row gathered matmuls) vs 4 without adapters
  same-rR         a batch of 4 all on adapter A: the engine's shared-weight path vs the adapter merged into the
                  weights (W += s·up·down, restored afterwards; merge + restore time reported apart)

`--device cpu --tiny` runs every case on the tiny model at 64² (the CPU test suite does, so this cannot rot).
GPU: `python bench/engine/lora_bench.py --device cuda` (see engine/README.md, "LoRA adapters").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "engine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import build_components, cut_text_encoder, machine, percentile, slug_for, sync, write_report  # noqa: E402
from kleinserve_engine import tiny  # noqa: E402
from kleinserve_engine.fastpath import FastPathOptions  # noqa: E402
from kleinserve_engine.loading import LoadedModel  # noqa: E402
from kleinserve_engine.lora.spec import LoraSpec  # noqa: E402
from kleinserve_engine.pipeline import Engine, EngineOptions, Job  # noqa: E402
from kleinserve_engine.preprocess import Reference  # noqa: E402

BLOCK_LINEAR = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.\d+\.")


def write_adapter(transformer, rank: int, seed: int, path: Path, dtype) -> int:
    """A rank-`rank` adapter on every block Linear, in diffusers/PEFT layout (what diffusers' trainers write)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in transformer.named_modules():
        if isinstance(m, torch.nn.Linear) and BLOCK_LINEAR.match(name):
            sd[f"transformer.{name}.lora_A.weight"] = (torch.randn(rank, m.in_features, generator=g) * 0.02).to(dtype)
            sd[f"transformer.{name}.lora_B.weight"] = (torch.randn(m.out_features, rank, generator=g) * 0.02).to(dtype)
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({"transformer.r": rank, "transformer.lora_alpha": rank})}
    save_file(sd, str(path), metadata=meta)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return path.stat().st_size


def drop_page_cache(path: Path) -> bool:
    """Asks the kernel to forget the file's pages, so the next read comes from the disk (no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


class Runner:
    def __init__(self, engine: Engine, size: int, device):
        self.engine, self.size, self.device = engine, size, device
        rng = np.random.default_rng(0)
        self.image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        self.n = 0

    def jobs(self, loras_per_row: list[list]) -> list[Job]:
        self.n += 1
        ref = Reference(self.image, "lora-bench-ref")  # cached latents: the adapter's cost is in the denoise
        out = []
        for k, loras in enumerate(loras_per_row):
            j = Job(prompt=f"lora bench {k}", refs=[ref], seeds=[k], width=self.size, height=self.size, steps=4,
                    output_format="jpeg", output_quality=90)
            j.loras = loras
            out.append(j)
        return out

    def once(self, loras_per_row) -> tuple[float, dict]:
        js = self.jobs(loras_per_row)
        sync(self.device)
        t0 = time.perf_counter()
        res = self.engine.run_batch(js)
        sync(self.device)
        for r in res:
            if isinstance(r, Exception):
                raise r
        return time.perf_counter() - t0, res[0].timings

    def measure(self, rows_for_run, runs: int, warmup: int) -> dict:
        """rows_for_run(i) -> the batch's adapters for run i; p50/p90 of the batch and of its denoise stage."""
        first, _ = self.once(rows_for_run(-1))
        for i in range(max(0, warmup - 1)):
            self.once(rows_for_run(i))
        totals, denoise = [], []
        for i in range(runs):
            t, timings = self.once(rows_for_run(i))
            totals.append(t)
            denoise.append(timings["denoise_ms"])
        return {"p50_s": percentile(totals, 50), "p90_s": percentile(totals, 90), "denoise_p50_ms": percentile(denoise, 50),
                "first_call_s": first, "runs": runs}


def merged(transformer, modules, scale):
    """Adds scale * up @ down to each targeted weight; returns the originals to restore."""
    backup = {}
    with torch.no_grad():
        for name, d in modules.items():
            lin = transformer.get_submodule(name)
            backup[name] = lin.weight.detach().clone()
            lin.weight.add_((d.scale * scale) * (d.up.to(lin.weight.dtype) @ d.down.to(lin.weight.dtype)))
    return backup


def restore(transformer, backup) -> None:
    with torch.no_grad():
        for name, w in backup.items():
            transformer.get_submodule(name).weight.copy_(w)


def overhead(x: dict, base: dict) -> dict:
    return {"overhead_pct": 100 * (x["p50_s"] / base["p50_s"] - 1),
            "denoise_overhead_pct": 100 * (x["denoise_p50_ms"] / base["denoise_p50_ms"] - 1)}


def markdown(r: dict) -> str:
    lines = [f"# LoRA benchmark — {r['machine']}", "", f"{r['date']} · torch {r['torch']} · {r['dtype']} · compile {r['compile']} · "
             f"model {r['model']} · {r['size']}² edit, 1 reference, 4 steps · p50 over {r['runs']} runs after {r['warmup']} warm-up", "",
             "| case | p50 (s) | denoise p50 (ms) | vs its baseline | notes |", "|---|---|---|---|---|"]
    for key, c in r["cases"].items():
        if "error" in c:
            lines.append(f"| {key} | failed: {c['error'][:140]} | | | |")
            continue
        if "p50_s" not in c:
            continue
        vs = f"{c['overhead_pct']:+.1f}% (denoise {c['denoise_overhead_pct']:+.1f}%)" if "overhead_pct" in c else "—"
        lines.append(f"| {key} | {c['p50_s']:.4f} | {c['denoise_p50_ms']:.1f} | {vs} | {c.get('note', '')} |")
    if r.get("first_use"):
        lines += ["", "First use of an uncached adapter from local disk:", "",
                  "| rank | file MB | read+hash+convert (s) | to device (s) | first request − cached request (s) | page cache dropped |",
                  "|---|---|---|---|---|---|"]
        for row in r["first_use"]:
            if "error" in row:
                lines.append(f"| {row['rank']} | failed: {row['error'][:140]} | | | | |")
                continue
            lines.append(f"| {row['rank']} | {row['file_mb']:.1f} | {row['host_s']:.3f} | {row['device_s']:.3f} | "
                         f"{row['first_request_extra_s']:.3f} | {row['page_cache_dropped']} |")
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: the tiny model at 64²")
    ap.add_argument("--ranks", default=None, help="comma list (default 16,64; tiny: 4,16)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-backend", default="inductor", help="aot_eager for a cheap CPU dry run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 64 if args.tiny else 1024
    ranks = [int(r) for r in (args.ranks or ("4,16" if args.tiny else "16,64")).split(",") if r]
    slug = slug_for(device, args.tiny)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"lora-{slug}" + (f"-{args.tag}" if args.tag else "")
    report = {"machine": machine(device), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "size": size, "ranks": ranks,
              "model": "tiny" if args.tiny else "klein-4B architecture, random weights", "runs": args.runs, "warmup": args.warmup,
              "command": " ".join(["python", *sys.argv]), "compile": None, "cases": {}, "first_use": []}

    def save():
        write_report(args.out, name, report, markdown(report))

    def guarded(where: dict, fn):
        try:
            fn()
        except Exception as exc:  # an OOM or a compile failure: keep the other figures
            import traceback

            traceback.print_exc()
            where["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            save()

    save()
    tokenizer, lm, transformer, vae = build_components(device, dtype, args.tiny)
    model = LoadedModel(model_id=report["model"], path=Path("."), device=device, dtype=dtype, tokenizer=tokenizer,
                        text_encoder=cut_text_encoder(lm), transformer=transformer, vae=vae,
                        scheduler_config=dict(tiny.SCHEDULER_CONFIG))
    fp = FastPathOptions.for_device(device.type, compile=args.compile, compile_backend=args.compile_backend)
    report["compile"] = fp.compile
    engine = Engine(model, EngineOptions(fastpath=fp, prompt_cache_mb=256, ref_cache_mb=512))
    run = Runner(engine, size, device)
    store = engine.adapters
    work = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    cases = report["cases"]

    base = cases["base"] = {}
    guarded(base, lambda: base.update(run.measure(lambda i: [[]], args.runs, args.warmup)))
    base4 = cases["base-batch4"] = {}
    guarded(base4, lambda: base4.update(run.measure(lambda i: [[]] * 4, args.runs, args.warmup)))

    for rank in ranks:
        paths = {k: work / f"r{rank}-{k}.safetensors" for k in ("a", "b", "fresh")}
        sizes = {k: write_adapter(transformer, rank, seed=10 * rank + i, path=p, dtype=dtype) for i, (k, p) in enumerate(paths.items())}
        adapters = {}

        def load_ab(rank=rank, paths=paths):
            for k in ("a", "b"):
                adapters[k] = store.adapter(LoraSpec(str(paths[k]), None, 1.0), 0)

        guarded(report, load_ab)
        if "a" not in adapters:
            continue
        A, B = [(adapters["a"], 1.0)], [(adapters["b"], 1.0)]

        c = cases[f"lora-r{rank}"] = {}
        guarded(c, lambda c=c, A=A: c.update(run.measure(lambda i: [A], args.runs, args.warmup)))
        if "p50_s" in c and "p50_s" in base:
            c.update(overhead(c, base))
            save()

        c = cases[f"switch-r{rank}"] = {"note": "alternating A, B, A, ... each request alone"}
        guarded(c, lambda c=c, A=A, B=B: c.update(run.measure(lambda i: [A if i % 2 else B], args.runs, args.warmup)))
        same = cases.get(f"lora-r{rank}", {})
        if "p50_s" in c and "p50_s" in same:
            c.update(overhead(c, same))
            c["note"] += " (vs always A)"
            save()

        c = cases[f"mixed-r{rank}"] = {"note": "batch of 4: A, B, none, A (vs 4 without adapters)"}
        guarded(c, lambda c=c, A=A, B=B: c.update(run.measure(lambda i: [A, B, [], A], args.runs, args.warmup)))
        if "p50_s" in c and "p50_s" in base4:
            c.update(overhead(c, base4))
            save()

        c = cases[f"same-r{rank}"] = {"note": "batch of 4 all on A, shared-weight path (vs 4 without adapters)"}
        guarded(c, lambda c=c, A=A: c.update(run.measure(lambda i: [A] * 4, args.runs, args.warmup)))
        if "p50_s" in c and "p50_s" in base4:
            c.update(overhead(c, base4))
            save()

        c = cases[f"merged-r{rank}"] = {"note": "batch of 4 on A merged into the weights (vs 4 without adapters)"}

        def measure_merged(c=c, rank=rank):
            mods = store.on_model_device(adapters["a"])
            sync(device)
            t0 = time.perf_counter()
            backup = merged(transformer, mods, 1.0)
            sync(device)
            t_merge = time.perf_counter() - t0
            try:
                c.update(run.measure(lambda i: [[]] * 4, args.runs, args.warmup))
            finally:
                sync(device)
                t0 = time.perf_counter()
                restore(transformer, backup)
                sync(device)
                c["restore_s"] = time.perf_counter() - t0
            c["merge_s"] = t_merge
            c["note"] += f"; merge {t_merge:.3f}s, restore {c['restore_s']:.3f}s"
            if "p50_s" in base4:
                c.update(overhead(c, base4))

        guarded(c, measure_merged)

        row = {"rank": rank, "file_mb": sizes["fresh"] / 2**20}
        report["first_use"].append(row)

        def first_use(row=row, paths=paths, A=A):
            dropped = drop_page_cache(paths["fresh"])
            t0 = time.perf_counter()
            fresh = store.adapter(LoraSpec(str(paths["fresh"]), None, 1.0), 0)
            row["host_s"] = time.perf_counter() - t0
            sync(device)
            t0 = time.perf_counter()
            store.on_model_device(fresh)
            sync(device)
            row["device_s"] = time.perf_counter() - t0
            # the whole first request on a new adapter (drop it from both tiers and the page cache again)
            store.clear()
            drop_page_cache(paths["fresh"])
            cached = percentile([run.once([A])[0] for _ in range(3)], 50)
            sync(device)
            t0 = time.perf_counter()
            spec_rows = [store.resolve([LoraSpec(str(paths["fresh"]), None, 1.0)])]
            run.once(spec_rows)
            row["first_request_extra_s"] = time.perf_counter() - t0 - cached
            row["page_cache_dropped"] = dropped

        guarded(row, first_use)

    import shutil

    shutil.rmtree(work, ignore_errors=True)  # three adapter files per rank: ~0.6 GB at rank 64
    print(markdown(report))
    print(f"wrote {args.out / (name + '.json')} and {args.out / (name + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
