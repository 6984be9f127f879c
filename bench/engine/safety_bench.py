"""What the safety checker costs the engine, at 1024² on the full-size klein-4B architecture (random weights).

Cases, each written to JSON + markdown as soon as it is measured (a run killed at its limit keeps what it has):
  none-bB    text-to-image, 4 steps, batch of B (1 and 4), no checker           (the reference latency)
  flag-bB    the same with the checker classifying every image (threshold 1.01: nothing flagged)
  blur-bB    the same with every image flagged and blurred (threshold 0: the worst case of the blur policy)
The checker is loaded through the engine's own path (SafetyChecker.load): by default a ViT-B/16 224² image
classifier with labels (normal, nsfw) and random weights, built here and saved with save_pretrained (the
architecture of the common open NSFW detectors; speed does not depend on weight values), or `--checker DIR|REPO`.

`--device cpu --tiny` runs every case on the tiny model and the tiny checker at 64² (the CPU test suite does).
GPU: `python bench/engine/safety_bench.py --device cuda` (see engine/README.md, "Safety checker").
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "engine"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import build_components, cut_text_encoder, machine, percentile, slug_for, sync, write_report  # noqa: E402
from kleinserve_engine import tiny  # noqa: E402
from kleinserve_engine.fastpath import FastPathOptions  # noqa: E402
from kleinserve_engine.loading import LoadedModel  # noqa: E402
from kleinserve_engine.pipeline import Engine, EngineOptions, Job  # noqa: E402
from kleinserve_engine.safety import SafetyChecker, SafetyOptions, build_tiny_checker  # noqa: E402


def build_vit_b16_checker(out: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=224, patch_size=16, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    ViTForImageClassification(config).eval().save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
    return out


def measure(engine: Engine, size: int, batch: int, runs: int, warmup: int, device) -> dict:
    def once(i):
        jobs = [Job(prompt=f"safety bench {k}", refs=[], seeds=[1000 * i + k], width=size, height=size, steps=4,
                    output_format="jpeg", output_quality=90) for k in range(batch)]
        sync(device)
        t0 = time.perf_counter()
        res = engine.run_batch(jobs)
        sync(device)
        for r in res:
            if isinstance(r, Exception):
                raise r
        return time.perf_counter() - t0, res[0]

    for i in range(warmup):
        once(-1 - i)
    totals, stage, flagged = [], [], 0
    for i in range(runs):
        t, res = once(i)
        totals.append(t)
        if "safety_check_ms" in res.timings:
            stage.append(res.timings["safety_check_ms"])
        flagged += sum(1 for v in res.safety or [] if v["nsfw"])
    return {"p50_s": percentile(totals, 50), "p90_s": percentile(totals, 90), "safety_check_p50_ms": percentile(stage, 50) if stage else None,
            "runs": runs, "flagged_first_job_images": flagged}


def markdown(r: dict) -> str:
    lines = [f"# Safety checker benchmark — {r['machine']}", "",
             f"{r['date']} · torch {r['torch']} · {r['dtype']} · compile {r['compile']} · model {r['model']} · checker "
             f"{r['checker']} · {r['size']}² text-to-image, 4 steps · p50 over {r['runs']} runs after {r['warmup']} warm-up", "",
             "| case | p50 batch (s) | p90 (s) | safety stage p50 (ms) | vs no checker |", "|---|---|---|---|---|"]
    for key, c in r["cases"].items():
        if "error" in c:
            lines.append(f"| {key} | failed: {c['error'][:140]} | | | |")
            continue
        vs = f"{c['overhead_pct']:+.2f}%" if "overhead_pct" in c else "—"
        stage = "—" if c["safety_check_p50_ms"] is None else f"{c['safety_check_p50_ms']:.2f}"
        lines.append(f"| {key} | {c['p50_s']:.4f} | {c['p90_s']:.4f} | {stage} | {vs} |")
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: the tiny model and tiny checker at 64²")
    ap.add_argument("--checker", default=None, help="an image classifier DIR or HF repo id (default: random ViT-B/16)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 64 if args.tiny else 1024
    slug = slug_for(device, args.tiny)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"safety-{slug}"
    work = Path(tempfile.mkdtemp(prefix="safety-bench-"))
    if args.checker:
        checker_source, checker_name = args.checker, args.checker
    elif args.tiny:
        checker_source, checker_name = str(build_tiny_checker(work / "checker")), "tiny ViT (random)"
    else:
        checker_source, checker_name = str(build_vit_b16_checker(work / "checker")), "ViT-B/16 224² (random weights)"
    report = {"machine": machine(device), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "size": size, "checker": checker_name,
              "model": "tiny" if args.tiny else "klein-4B architecture, random weights", "runs": args.runs,
              "warmup": args.warmup, "command": " ".join(["python", *sys.argv]), "compile": None, "cases": {}}

    def save():
        write_report(args.out, name, report, markdown(report))

    tokenizer, lm, transformer, vae = build_components(device, dtype, args.tiny)
    model = LoadedModel(model_id=report["model"], path=Path("."), device=device, dtype=dtype, tokenizer=tokenizer,
                        text_encoder=cut_text_encoder(lm), transformer=transformer, vae=vae,
                        scheduler_config=dict(tiny.SCHEDULER_CONFIG))
    fp = FastPathOptions.for_device(device.type, compile=args.compile)
    report["compile"] = fp.compile
    checkers = {"none": None}
    for policy, threshold in (("flag", 1.01), ("blur", 0.0)):
        checkers[policy] = SafetyChecker.load(SafetyOptions(checker_source, policy=policy, threshold=threshold), device)
    # one Engine per policy over the same modules; the denoiser is prepared (and compiled) once per Engine
    engines = {k: Engine(model, EngineOptions(fastpath=fp, safety=c)) for k, c in checkers.items()}
    for batch in [int(b) for b in args.batches.split(",") if b]:
        for policy, engine in engines.items():
            case = report["cases"][f"{policy}-b{batch}"] = {}
            try:
                case.update(measure(engine, size, batch, args.runs, args.warmup, device))
                base = report["cases"].get(f"none-b{batch}", {})
                if policy != "none" and "p50_s" in base:
                    case["overhead_pct"] = 100 * (case["p50_s"] / base["p50_s"] - 1)
            except Exception as exc:  # an OOM, say: keep the other figures
                case["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
