"""GPU benchmark of the kleinserve engine against diffusers' Flux2KleinPipeline (issue 2 item 8, issue 4 item 5).

Builds full-size FLUX.2 [klein] 4B components with random bf16 weights from the real configs (no download:
speed does not depend on weight values), runs the cases below through both engines in one process, and writes
JSON and a markdown table into bench/results/.

  (a) 1024^2 edit, 1 reference, 4 steps      (b) 1024^2 edit, 4 references
  (c) 1024^2 text-to-image                   (d) 512^2 edit, 8 concurrent requests: batched vs unbatched

`--device cpu --tiny` is a smoke mode on the tiny model (small sizes, 2 runs) that the CPU test suite runs,
so this script is known to work before a GPU session spends time on it.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "engine"))

from kleinserve_engine import tiny  # noqa: E402
from kleinserve_engine.fastpath import FastPathOptions  # noqa: E402
from kleinserve_engine.loading import LoadedModel  # noqa: E402
from kleinserve_engine.pipeline import Engine, EngineOptions, Job  # noqa: E402
from kleinserve_engine.preprocess import Reference  # noqa: E402

# diffusers' scripts/convert_flux2_to_diffusers.py, klein 4B
KLEIN_4B_TRANSFORMER = dict(
    patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000, guidance_embeds=False,
)
# Qwen3-4B's public config
QWEN3_4B = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

FULL_CASES = {
    "a": dict(size=1024, refs=1, concurrent=1),
    "b": dict(size=1024, refs=4, concurrent=1),
    "c": dict(size=1024, refs=0, concurrent=1),
    "d": dict(size=512, refs=1, concurrent=8),
}
TINY_CASES = {  # smoke mode: same code paths, CPU-sized shapes
    "a": dict(size=64, refs=1, concurrent=1),
    "b": dict(size=64, refs=4, concurrent=1),
    "c": dict(size=64, refs=0, concurrent=1),
    "d": dict(size=64, refs=1, concurrent=8),
}
DESCRIPTIONS = {"a": "edit, 1 reference", "b": "edit, 4 references", "c": "text-to-image", "d": "edit, 8 concurrent requests"}


def build_components(device, dtype, tiny_model: bool):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny.build_tokenizer()  # offline byte-level tokenizer: 512 padded tokens like the real one
    with torch.device(device):
        if tiny_model:
            text = tiny.build_text_encoder(len(tokenizer))
            transformer = tiny.build_transformer()
            vae = tiny.build_vae()
        else:
            prev = torch.get_default_dtype()
            torch.set_default_dtype(dtype)  # build straight in bf16: a 4B model in fp32 first would double memory
            try:
                text = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))
                transformer = Flux2Transformer2DModel(**KLEIN_4B_TRANSFORMER)
                vae = AutoencoderKLFlux2()
            finally:
                torch.set_default_dtype(prev)
            with torch.no_grad():  # non-trivial BatchNorm statistics, as in the real VAE
                vae.bn.running_var.uniform_(0.5, 2.0)
    text, transformer, vae = (m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in (text, transformer, vae))
    return tokenizer, text, transformer, vae


def cut_text_encoder(lm, deepest=27):
    """The engine's view of the text encoder: the first 27 layers of the same weights, no final norm, no LM head."""
    cut = copy.copy(lm.model)
    cut._modules = dict(lm.model._modules)
    cut.config = copy.copy(lm.model.config)
    cut.config.num_hidden_layers = deepest
    if getattr(cut.config, "layer_types", None):
        cut.config.layer_types = cut.config.layer_types[:deepest]
    cut.layers = torch.nn.ModuleList(list(lm.model.layers)[:deepest])
    cut.norm = torch.nn.Identity()
    return cut


def percentile(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device, dtype) -> float | None:
    if device.type != "cuda":
        return None
    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    sync(device)
    return 2 * n**3 * 20 / (time.perf_counter() - t0) / 1e12


def denoise_flops(transformer, size, refs, steps=4, batch=1) -> float:
    """FLOPs of the denoiser for one request, as counted in shared/docs/flux2-klein.md.

    Each token passes ONE stream of the double blocks (image tokens the image weights, text tokens the text
    weights) and all single blocks, so the linear work per token is 2 x (single-block params + half the
    double-block params); attention adds 4 * L^2 * inner_dim per layer. Embedders, modulation and the output
    projection are per-sample (M = 1) or tiny and are left out, as in the doc.
    """
    cfg = transformer.config
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    per_token_params = count(transformer.single_transformer_blocks) + count(transformer.transformer_blocks) / 2
    tokens = 512 + (size // 16) ** 2 * (1 + refs)
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    per_step = 2 * per_token_params * tokens + 4 * tokens**2 * inner * (cfg.num_layers + cfg.num_single_layers)
    return per_step * steps * batch


def references(n, size):
    rng = np.random.default_rng(n)
    # mixed aspects are the interesting case for correctness, but the benchmark times the stated square sizes
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def time_engine(engine: Engine, case, runs, warmup, device, batched=True):
    refs = references(case["refs"], case["size"])
    counter = [0]

    def jobs():
        counter[0] += 1
        # distinct references per run: the ref-latent cache must not hide VAE encode time
        rs = [Reference(img, f"bench-{counter[0]}-{i}") for i, img in enumerate(refs)]
        return [Job(prompt=f"make it a watercolor {counter[0]}-{k}", refs=rs, seeds=[k], width=case["size"], height=case["size"],
                    steps=4, output_format="jpeg", output_quality=90) for k in range(case["concurrent"])]

    def once():
        js = jobs()
        sync(device)
        t0 = time.perf_counter()
        if batched:
            res = engine.run_batch(js)
        else:
            res = [engine.run_batch([j])[0] for j in js]
        sync(device)
        for r in res:
            if isinstance(r, Exception):
                raise r
        return time.perf_counter() - t0, res

    for _ in range(warmup):
        once()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    totals, stages = [], {}
    for _ in range(runs):
        t, res = once()
        totals.append(t)
        for key, v in res[0].timings.items():
            stages.setdefault(key, []).append(v)
    out = {"p50_s": percentile(totals, 50), "p90_s": percentile(totals, 90), "runs": runs,
           "stage_p50_ms": {k: percentile(v, 50) for k, v in stages.items()}}
    if device.type == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def time_diffusers(pipe, case, runs, warmup, device):
    refs = references(case["refs"], case["size"])
    gen = torch.Generator("cpu")

    def once():
        sync(device)
        t0 = time.perf_counter()
        for k in range(case["concurrent"]):
            pipe(image=refs or None, prompt=f"make it a watercolor {k}", height=case["size"], width=case["size"],
                 num_inference_steps=4, guidance_scale=1.0, generator=gen.manual_seed(k), output_type="pil")
        sync(device)
        return time.perf_counter() - t0

    for _ in range(warmup):
        once()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    totals = [once() for _ in range(runs)]
    out = {"p50_s": percentile(totals, 50), "p90_s": percentile(totals, 90), "runs": runs}
    if device.type == "cuda":
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def fp8_relative_error(transformer, engine_bf16: Engine, size, device):
    """Relative error of the fp8 denoiser output against bf16 at each step of case (a), on one trajectory."""
    from kleinserve_engine import latents as L
    from kleinserve_engine.fastpath import quantize_fp8
    from kleinserve_engine.sampling import euler, sigmas, timestep

    q = copy.deepcopy(transformer)
    quantize_fp8(q)
    h = w = size // 16
    m = engine_bf16.model
    with torch.inference_mode():
        text, _ = engine_bf16.prompt_embeddings(["fp8 check"])
        text = text["fp8 check"]
        ref, _ = engine_bf16.reference_latents([Reference(references(1, size)[0], "fp8-ref")])
        refs = L.pack(ref[0])
        x = L.pack(engine_bf16.noise(0, h, w)).to(device)
        ids = torch.cat([L.output_ids(h, w), L.reference_ids([(h, w)])]).to(device)
        tids = L.text_ids(512).to(device)
        sig = sigmas(m.scheduler_config, 4, h * w).to(device)
        errs = []
        for i in range(4):
            inp = torch.cat([x, refs], 1)
            t = timestep(sig[i], 1, x.dtype)
            kw = dict(encoder_hidden_states=text, timestep=t, img_ids=ids, txt_ids=tids, guidance=None, return_dict=False)
            v16 = transformer(hidden_states=inp, **kw)[0][:, : h * w].float()
            v8 = q(hidden_states=inp, **kw)[0][:, : h * w].float()
            errs.append(float((v8 - v16).norm() / v16.norm()))
            x = euler(x, v16.to(x.dtype), sig[i], sig[i + 1])
    del q
    return errs


def ablation(model, case, args, device):
    """What each fast-path piece buys on case (a). Ordered so in-place changes (VAE channels_last) only accumulate."""
    steps = [
        ("eager (no fast path)", dict(compile=False, channels_last=False, sdpa_priority=False)),
        ("+ SDPA backend priority", dict(compile=False, channels_last=False, sdpa_priority=True)),
        ("+ VAE channels_last", dict(compile=False, channels_last=True, sdpa_priority=True)),
        ("+ torch.compile (inductor)", dict(compile=True, compile_backend=args.compile_backend, channels_last=True, sdpa_priority=True)),
    ]
    out = []
    for name, kw in steps:
        if kw["compile"] and device.type != "cuda" and args.compile is not True:
            continue  # inductor on CPU costs minutes; ask for it with --compile
        opts = FastPathOptions.for_device("cpu", **kw)
        eng = Engine(model, EngineOptions(fastpath=opts, prompt_cache_mb=0, ref_cache_mb=0))
        res = time_engine(eng, case, args.runs, args.warmup, device)
        out.append({"step": name, **res})
        print(f"ablation {name}: {res['p50_s']:.3f}s", file=sys.stderr)
    return out


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({platform.node()})"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return f"CPU {cpu} x{torch.get_num_threads()} threads ({platform.node()})"


def markdown(report) -> str:
    lines = [f"# Engine benchmark — {report['machine']}", "",
             f"{report['date']} · torch {report['torch']} · diffusers {report['diffusers']} · {report['dtype']} · "
             f"precision {report['precision']} · compile {report['compile']} · model {report['model']}", "",
             f"Measured bf16 matmul peak: {report['matmul_peak_tflops']:.0f} TFLOP/s" if report["matmul_peak_tflops"] else
             "Measured bf16 matmul peak: n/a (CPU)", "",
             "| case | kleinserve p50 / p90 (s) | diffusers p50 / p90 (s) | speed-up | denoise TFLOP/s | % of peak | peak GPU GiB (ks / diffusers) | stage p50 ms (text / vae enc / denoise / decode / img enc) |",
             "|---|---|---|---|---|---|---|---|"]
    for key, case in report["cases"].items():
        ks, df = case["kleinserve"], case.get("diffusers")
        st = ks["stage_p50_ms"]
        stages = " / ".join(f"{st.get(s, 0):.1f}" for s in ("text_encode_ms", "vae_encode_ms", "denoise_ms", "decode_ms", "image_encode_ms"))
        dstr = f"{df['p50_s']:.3f} / {df['p90_s']:.3f}" if df else "—"
        speed = f"{df['p50_s'] / ks['p50_s']:.2f}x" if df else "—"
        mem = f"{ks.get('peak_gpu_mem_gib', 0):.1f} / {df.get('peak_gpu_mem_gib', 0):.1f}" if df else f"{ks.get('peak_gpu_mem_gib', 0):.1f}"
        frac = f"{100 * case['denoise_tflops'] / report['matmul_peak_tflops']:.0f}%" if report["matmul_peak_tflops"] else "—"
        lines.append(f"| ({key}) {case['description']} | {ks['p50_s']:.3f} / {ks['p90_s']:.3f} | {dstr} | {speed} | "
                     f"{case['denoise_tflops']:.1f} | {frac} | {mem} | {stages} |")
        if "unbatched" in case:
            ub = case["unbatched"]
            lines.append(f"| ({key}) same, unbatched (8 x batch 1) | {ub['p50_s']:.3f} / {ub['p90_s']:.3f} | | "
                         f"batched throughput {ub['p50_s'] / ks['p50_s']:.2f}x | | | {ub.get('peak_gpu_mem_gib', 0):.1f} | |")
    if report.get("ablation"):
        lines += ["", "What each fast-path step buys, case (a):", "", "| configuration | p50 (s) | p90 (s) | denoise p50 (ms) |", "|---|---|---|---|"]
        for row in report["ablation"]:
            lines.append(f"| {row['step']} | {row['p50_s']:.3f} | {row['p90_s']:.3f} | {row['stage_p50_ms']['denoise_ms']:.1f} |")
    if report.get("fp8_relative_error"):
        lines += ["", "FP8 (torchao, dynamic activations, per-row weights) denoiser relative error vs bf16 per step: "
                  + ", ".join(f"{e:.4f}" for e in report["fp8_relative_error"])]
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: the tiny model at small sizes")
    ap.add_argument("--cases", default="a,b,c,d")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp8"])
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--ablation", action="store_true", help="also time case (a) with the fast-path pieces added one by one")
    ap.add_argument("--fp8-error", action="store_true", help="also report fp8-vs-bf16 denoiser error per step")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    cases = TINY_CASES if args.tiny else FULL_CASES
    selected = [c for c in args.cases.split(",") if c]
    tokenizer, lm, transformer, vae = build_components(device, dtype, args.tiny)
    scheduler_config = dict(tiny.SCHEDULER_CONFIG)

    report = {"machine": machine(device), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "precision": args.precision,
              "model": "tiny" if args.tiny else "klein-4B architecture, random weights", "command": " ".join(["python", *sys.argv]),
              "matmul_peak_tflops": matmul_peak_tflops(device, dtype), "cases": {}}
    try:
        import diffusers

        report["diffusers"] = diffusers.__version__
    except ImportError:
        report["diffusers"] = None
        args.no_diffusers = True

    # diffusers first: the engine's fast path converts the VAE to channels_last in place
    diff_results = {}
    if not args.no_diffusers:
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

        pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config), vae=vae,
                                  text_encoder=lm, tokenizer=tokenizer, transformer=transformer, is_distilled=True)
        pipe.set_progress_bar_config(disable=True)
        for key in selected:
            diff_results[key] = time_diffusers(pipe, cases[key], args.runs, args.warmup, device)
            print(f"diffusers ({key}): {diff_results[key]}", file=sys.stderr)
        del pipe

    model = LoadedModel(model_id=report["model"], path=Path("."), device=device, dtype=dtype, tokenizer=tokenizer,
                        text_encoder=cut_text_encoder(lm), transformer=transformer, vae=vae, scheduler_config=scheduler_config)
    fp = FastPathOptions.for_device(device.type, compile=args.compile, compile_backend=args.compile_backend, precision="bf16")
    report["compile"] = fp.compile
    fp8_errors = None
    if args.fp8_error and device.type == "cuda":
        fp8_errors = fp8_relative_error(transformer, Engine(model, EngineOptions(fastpath=FastPathOptions.for_device("cpu"))), cases["a"]["size"], device)
        report["fp8_relative_error"] = fp8_errors
    if args.ablation:
        report["ablation"] = ablation(model, cases["a"], args, device)
    fp.precision = args.precision
    engine = Engine(model, EngineOptions(fastpath=fp, prompt_cache_mb=0, ref_cache_mb=0))

    for key in selected:
        case = cases[key]
        t0 = time.perf_counter()
        ks = time_engine(engine, case, args.runs, args.warmup, device)
        entry = {"description": DESCRIPTIONS[key], **case, "kleinserve": ks, "warmup_s": time.perf_counter() - t0}
        flops = denoise_flops(transformer, case["size"], case["refs"], batch=case["concurrent"])
        entry["denoise_tflops"] = flops / (ks["stage_p50_ms"]["denoise_ms"] / 1000) / 1e12
        if case["concurrent"] > 1:
            entry["unbatched"] = time_engine(engine, case, args.runs, args.warmup, device, batched=False)
            entry["batched_throughput_x"] = entry["unbatched"]["p50_s"] / ks["p50_s"]
        if key in diff_results:
            entry["diffusers"] = diff_results[key]
            entry["speedup_vs_diffusers"] = diff_results[key]["p50_s"] / ks["p50_s"]
        report["cases"][key] = entry
        print(f"kleinserve ({key}): {ks}", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    slug = ("tiny-cpu" if args.tiny else report["machine"].split(" (")[0].lower().replace(" ", "-")) + (f"-{args.tag}" if args.tag else "")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"engine-{slug}-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"engine-{slug}-{stamp}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
