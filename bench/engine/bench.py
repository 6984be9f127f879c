"""GPU benchmark of the kleinserve engine against diffusers' Flux2KleinPipeline.

Builds full-size FLUX.2 [klein] 4B components with random bf16 weights from the real configs (no download:
speed does not depend on weight values), runs the cases below through both engines in one process, and writes
JSON and a markdown table into --out AFTER EVERY CASE, so a run killed at its time limit keeps what it measured.

  (a) 1024^2 edit, 1 reference, 4 steps      (b) 1024^2 edit, 4 references
  (c) 1024^2 text-to-image                   (d) 512^2 edit, 8 concurrent requests: batched vs unbatched

Extras: --ablation (what each fast-path piece buys on (a), compile time included; `--ablation components` for the
compiled VAE and text encoder, cudnn.benchmark, fused QKV and fp8 attention), --batch-sweep (per-image time
by batch size at 512^2 and 1024^2: the data behind the batching rule), --deterministic-cost ((d) with every
request deterministic), --profile (top kernels of one (a) run), --precision bf16,fp8 with --fp8-error.

`--device cpu --tiny` is a smoke mode on the tiny model (small sizes) that the CPU test suite runs, so this
script is known to work before a GPU session spends time on it. bench/engine/gpu-run.sh runs it in stages.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "engine"))

from kleinserve_engine import tiny  # noqa: E402
from kleinserve_engine.fastpath import FastPathOptions, compiled_graphs, make_deterministic  # noqa: E402
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
# (size, batch sizes) measured by --batch-sweep; the tiny mode shrinks the sizes
FULL_SWEEP = [(512, (1, 2, 4, 8)), (1024, (1, 2))]
TINY_SWEEP = [(64, (1, 2)), (128, (1, 2))]
DESCRIPTIONS = {"a": "edit, 1 reference", "b": "edit, 4 references", "c": "text-to-image", "d": "edit, 8 concurrent requests"}
STAGE_KEYS = ("text_encode_ms", "vae_encode_ms", "denoise_ms", "decode_ms", "image_encode_ms")


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


def time_engine(engine: Engine, case, runs, warmup, device, batched=True, deterministic=False, last_pixels=None):
    """p50/p90 of one batch of `concurrent` requests; first_call_s is the first run alone (compile included).
    `last_pixels`, a list: the last run's first image is appended (every call's k-th run has the same inputs)."""
    refs = references(case["refs"], case["size"])
    counter = [0]

    def jobs():
        counter[0] += 1
        # distinct references per run: the ref-latent cache must not hide VAE encode time
        rs = [Reference(img, f"bench-{counter[0]}-{i}") for i, img in enumerate(refs)]
        return [Job(prompt=f"make it a watercolor {counter[0]}-{k}", refs=rs, seeds=[k], width=case["size"], height=case["size"],
                    steps=4, output_format="jpeg", output_quality=90, deterministic=deterministic) for k in range(case["concurrent"])]

    def once():
        js = jobs()
        sync(device)
        t0 = time.perf_counter()
        if batched and not deterministic:
            res = engine.run_batch(js)
        else:  # deterministic requests always run alone (batcher.py)
            res = [engine.run_batch([j])[0] for j in js]
        sync(device)
        for r in res:
            if isinstance(r, Exception):
                raise r
        return time.perf_counter() - t0, res

    graphs0 = compiled_graphs()
    first, _ = once()
    for _ in range(max(0, warmup - 1)):
        once()
    graphs_warm = compiled_graphs()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    totals, stages = [], {}
    for _ in range(runs):
        t, res = once()
        totals.append(t)
        for key, v in res[0].timings.items():
            stages.setdefault(key, []).append(v)
    out = {"p50_s": percentile(totals, 50), "p90_s": percentile(totals, 90), "runs": runs, "first_call_s": first,
           "graphs_compiled_warming": graphs_warm - graphs0, "graphs_compiled_timed": compiled_graphs() - graphs_warm,
           "stage_p50_ms": {k: percentile(v, 50) for k, v in stages.items()}}
    if last_pixels is not None:
        last_pixels.append(res[0].pixels[0])
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
    from kleinserve_engine.sampling import euler, seeded_noise, sigmas, timestep

    q = copy.deepcopy(transformer)
    quantize_fp8(q)
    h = w = size // 16
    m = engine_bf16.model
    with torch.inference_mode():
        text, _ = engine_bf16.prompt_embeddings(["fp8 check"])
        text = text["fp8 check"]
        ref, _ = engine_bf16.reference_latents([Reference(references(1, size)[0], "fp8-ref")])
        refs = L.pack(ref[0])
        x = L.pack(seeded_noise([0], h, w, m.dtype)).to(device)
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


def profile_once(engine: Engine, case, device, top=15) -> list[dict]:
    """The top kernels (by self device time on CUDA, self CPU time elsewhere) of one run of the case."""
    from torch.profiler import ProfilerActivity, profile

    refs = [Reference(img, f"profile-{i}") for i, img in enumerate(references(case["refs"], case["size"]))]
    job = Job(prompt="profile", refs=refs, seeds=[0], width=case["size"], height=case["size"], steps=4, output_format="jpeg")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        engine.run_batch([job])
        sync(device)
    on_cuda = device.type == "cuda"
    events = [e for e in prof.key_averages() if (getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) if on_cuda else e.self_cpu_time_total) > 0]

    def self_us(e):
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) if on_cuda else e.self_cpu_time_total

    total = sum(self_us(e) for e in events) or 1
    events.sort(key=self_us, reverse=True)
    return [{"name": e.key[:90], "self_ms": self_us(e) / 1000, "calls": e.count, "pct": 100 * self_us(e) / total} for e in events[:top]]


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({platform.node()})"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return f"CPU {cpu} x{torch.get_num_threads()} threads ({platform.node()})"


def software() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for name in ("diffusers", "transformers", "triton", "torchao"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # absent (torchao off CUDA boxes) or broken: say so rather than fail the run
            out[name] = None
    return out


def slug_for(device, tiny_model: bool) -> str:
    if tiny_model:
        return f"tiny-{device.type}"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-") if device.type == "cuda" else "cpu"


class Report:
    """The run's figures, rewritten in full (JSON + markdown) after every case."""

    def __init__(self, out: Path, name: str, data: dict):
        self.out, self.name, self.data = out, name, data
        out.mkdir(parents=True, exist_ok=True)

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.out / f"{self.name}.json", self.out / f"{self.name}.md"

    def save(self) -> None:
        self.data["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_report(self.out, self.name, self.data, markdown(self.data))


def write_report(out: Path, name: str, data: dict, md: str) -> None:
    """Writes <name>.json and <name>.md under out, each whole or not at all."""
    for path, text in ((out / f"{name}.json", json.dumps(data, indent=2) + "\n"), (out / f"{name}.md", md)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a kill mid-write leaves the previous complete file


def _fmt(v, spec=".3f", none="—"):
    return none if v is None else format(v, spec)


def markdown(r) -> str:
    sw = r["software"]
    peak = r.get("matmul_peak_tflops")
    lines = [f"# Engine benchmark — {r['machine']}", "",
             f"{r['date']} · torch {sw['torch']} · CUDA {sw['cuda']} · cuDNN {sw['cudnn']} · triton {sw['triton']} · "
             f"diffusers {sw['diffusers']} · transformers {sw['transformers']} · torchao {sw['torchao']} · Python {sw['python']}", "",
             f"{r['dtype']} · compile {r['compile']} ({r['compile_scope']}, {r['compile_backend']}) · model {r['model']} · "
             f"p50 over {r['runs']} runs after {r['warmup']} warm-up", "",
             f"Measured bf16 matmul rate (8192³): {peak:.0f} TFLOP/s" if peak else "Measured bf16 matmul rate: n/a (not CUDA)", ""]
    if r["cases"]:
        lines += ["| case | kleinserve p50 / p90 (s) | diffusers p50 / p90 (s) | speed-up | denoise ms | denoise TFLOP/s | "
                  "% of matmul rate | bf16 floor (s) | first call (s) | peak GiB (ks / diffusers) | stage p50 ms (text / vae enc / denoise / decode / img enc) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, case in r["cases"].items():
        if "error" in case and "kleinserve" not in case:
            lines.append(f"| ({key}) {case.get('description', '')} | failed: {case['error'][:120]} | | | | | | | | | |")
            continue
        ks, df = case.get("kleinserve"), case.get("diffusers")
        dstr = f"{df['p50_s']:.3f} / {df['p90_s']:.3f}" if df else "—"
        if ks is None:
            lines.append(f"| ({key}) {case['description']} | (pending) | {dstr} | | | | | | | | |")
            continue
        st = ks["stage_p50_ms"]
        stages = " / ".join(f"{st.get(s, 0):.1f}" for s in STAGE_KEYS)
        speed = f"{df['p50_s'] / ks['p50_s']:.2f}x" if df else "—"
        mem = f"{ks.get('peak_gpu_mem_gib', 0):.1f} / {df.get('peak_gpu_mem_gib', 0):.1f}" if df else f"{ks.get('peak_gpu_mem_gib', 0):.1f}"
        frac = f"{100 * case['denoise_tflops'] / peak:.0f}%" if peak else "—"
        floor = f"{case['denoise_tflop'] / peak:.3f}" if peak else "—"
        lines.append(f"| ({key}) {case['description']} | {ks['p50_s']:.3f} / {ks['p90_s']:.3f} | {dstr} | {speed} | {st.get('denoise_ms', 0):.1f} | "
                     f"{case['denoise_tflops']:.1f} | {frac} | {floor} | {ks['first_call_s']:.2f} | {mem} | {stages} |")
        for extra, label in (("unbatched", "same, unbatched (each request alone)"), ("deterministic", "same, every request deterministic (alone)")):
            if extra in case:
                ub = case[extra]
                lines.append(f"| ({key}) {label} | {ub['p50_s']:.3f} / {ub['p90_s']:.3f} | | batched: "
                             f"{ub['p50_s'] / ks['p50_s']:.2f}x this throughput | | | | | | {ub.get('peak_gpu_mem_gib', 0):.1f} | |")
        if "error" in case:
            lines.append(f"| ({key}) (part failed) | {case['error'][:160]} | | | | | | | | | |")
    if r.get("ablation"):
        lines += ["", "What each fast-path step buys, case (a) (compile ≈ first call − p50):", "",
                  "| configuration | p50 (s) | p90 (s) | stage p50 ms (text / vae enc / denoise / decode / img enc) | first call (s) | "
                  "graphs compiled | output vs first row, mean / max of 255 |", "|---|---|---|---|---|---|---|"]
        for row in r["ablation"]:
            if "error" in row:
                lines.append(f"| {row['step']} | failed: {row['error'][:300]} | | | | | |")
                continue
            stages = " / ".join(f"{row['stage_p50_ms'].get(s, 0):.1f}" for s in STAGE_KEYS)
            vs = row.get("vs_first_row")
            vs = f"{vs['mean_abs_diff']:.2f} / {vs['max_abs_diff']}" if vs else "—"
            lines.append(f"| {row['step']} | {row['p50_s']:.3f} | {row['p90_s']:.3f} | {stages} | "
                         f"{row['first_call_s']:.2f} | {row['graphs_compiled_warming']} (+{row['graphs_compiled_timed']} while timed) | {vs} |")
    if r.get("batch_sweep"):
        lines += ["", "Per-image time by batch size (1-reference edit; the batching rule comes from this):", "",
                  "| size | batch | batch p50 (s) | per image (s) | vs batch 1 |", "|---|---|---|---|---|"]
        for row in r["batch_sweep"]:
            if "error" in row:
                lines.append(f"| {row['size']}² | {row['batch']} | failed: {row['error'][:120]} | | |")
                continue
            lines.append(f"| {row['size']}² | {row['batch']} | {row['p50_s']:.3f} | {row['per_image_s']:.3f} | {row['vs_batch1']:.2f}x |")
        if r.get("suggested_batch_rule"):
            lines += ["", f"Suggested `--batch-rule {r['suggested_batch_rule']}` (largest batch whose per-image time is "
                      f"at least 15% under batch 1's; see engine/README.md)."]
    if r.get("fp8_relative_error"):
        lines += ["", "FP8 (torchao, dynamic activations, per-row weights) denoiser relative error vs bf16 per step: "
                  + ", ".join(f"{e:.4f}" for e in r["fp8_relative_error"])]
    for key, rows in (r.get("profile") or {}).items():
        lines += ["", f"Top kernels, one run of ({key}):", "", "| kernel | self ms | calls | % |", "|---|---|---|---|"]
        lines += [f"| `{row['name']}` | {row['self_ms']:.2f} | {row['calls']} | {row['pct']:.1f} |" for row in rows]
    if r.get("notes"):
        lines += [""] + [f"- {n}" for n in r["notes"]]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def suggested_rule(sweep) -> str | None:
    """Largest batch per size whose per-image time is at least 15% under batch 1's; otherwise 1."""
    rule = []
    for size in dict.fromkeys(row["size"] for row in sweep):
        rows = [row for row in sweep if row["size"] == size and "per_image_s" in row]
        paying = [row["batch"] for row in rows if row["batch"] == 1 or row["vs_batch1"] >= 1.15]
        if rows:
            rule.append(f"{size}x{size}:{max(paying) if paying else 1}")
    return ",".join(rule) or None


def guarded(report: Report, where: dict, key, fn):
    """Runs one measurement; a failure is recorded next to its case and the run goes on to the next one."""
    try:
        return fn()
    except Exception as exc:  # OOM, a compile error, a kernel missing on this card: keep the other figures
        print(f"{key} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        where["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None
    finally:
        report.save()


def engine_for(model, fastpath: FastPathOptions, deterministic=False) -> Engine:
    if not fastpath.channels_last:  # an earlier engine may have converted the shared VAE in place
        model.vae.to(memory_format=torch.contiguous_format)
    return Engine(model, EngineOptions(fastpath=fastpath, prompt_cache_mb=0, ref_cache_mb=0, deterministic=deterministic))


# On top of the default CUDA fast path (regional compile, channels_last VAE, SDPA priority), one piece added per row;
# every row is timed end to end and by stage, so each piece shows in the stage it changes. The text encoder, the
# longest compile (a whole 27-layer Qwen3), comes last so that a stage cut short at its limit keeps the other rows.
_DEFAULT_FAST_PATH = dict(compile=True, compile_scope="blocks", channels_last=True, sdpa_priority=True)
_WITH_VAE = dict(_DEFAULT_FAST_PATH, cudnn_benchmark=True, compile_vae=True)
COMPONENT_STEPS = [
    ("default fast path, cudnn.benchmark off", dict(_DEFAULT_FAST_PATH, cudnn_benchmark=False)),
    ("+ cudnn.benchmark", dict(_DEFAULT_FAST_PATH, cudnn_benchmark=True)),
    ("+ compiled VAE (encoder and decoder, dynamic shapes)", _WITH_VAE),
    ("+ fused QKV (double blocks)", dict(_WITH_VAE, fuse_qkv=True)),
    # refused in this build (fastpath.fp8_attention_refusal): the row records why, at no cost
    ("+ fp8 attention", dict(_WITH_VAE, fuse_qkv=True, fp8_attention=True)),
    ("+ compiled text encoder (whole, batch 1 static)", dict(_WITH_VAE, fuse_qkv=True, compile_text_encoder=True)),
]
CUDA_ONLY = ("compile_mode", "fp8_attention")  # CUDA graphs; fp8 attention (refused off CUDA as well)


def ablation(report, model, case, args, device, which="fastpath"):
    """What each fast-path piece buys on case (a). Ordered so in-place changes (VAE channels_last) only accumulate;
    the whole-model static compile comes last because it compiles longest. `which="components"`: COMPONENT_STEPS."""
    steps = COMPONENT_STEPS if which == "components" else [
        ("eager (no fast path)", dict(compile=False, channels_last=False, sdpa_priority=False)),
        ("+ SDPA backend priority", dict(compile=False, channels_last=False, sdpa_priority=True)),
        ("+ VAE channels_last", dict(compile=False, channels_last=True, sdpa_priority=True)),
        ("+ regional compile (blocks, dynamic shapes)", dict(compile=True, compile_scope="blocks", channels_last=True, sdpa_priority=True)),
        # CUDA graphs through inductor's cudagraph trees; CUDA only, kept only if this row shows they pay
        ("+ CUDA graphs (regional, mode reduce-overhead)", dict(compile=True, compile_scope="blocks", compile_mode="reduce-overhead",
                                                                channels_last=True, sdpa_priority=True)),
        ("whole-model compile (static shapes) instead", dict(compile=True, compile_scope="model", channels_last=True, sdpa_priority=True)),
    ]
    rows = report.data.setdefault("ablation", [])
    # Each row's last image against the first row's, same inputs: a piece that pays by corrupting the output (a
    # CUDA graph replaying over a buffer still in use, say) shows as a large mean difference, where compilation's
    # rounding stays near zero even when random weights amplify it into a larger maximum.
    reference: list = []
    for name, kw in steps:
        if kw["compile"] and device.type != "cuda" and args.compile is not True:
            continue  # inductor on CPU costs minutes; ask for it with --compile
        if device.type != "cuda" and any(kw.get(k) for k in CUDA_ONLY):
            continue
        row = {"step": name}
        rows.append(row)

        def measure(kw=kw, row=row):
            opts = FastPathOptions.for_device("cpu", compile_backend=args.compile_backend, **kw)
            pixels: list = []
            res = time_engine(engine_for(model, opts), case, args.runs, args.warmup, device, last_pixels=pixels)
            row.update(res)
            if not reference:
                reference.extend(pixels)
            diff = np.abs(pixels[0].astype(np.int16) - reference[0].astype(np.int16))
            row["vs_first_row"] = {"mean_abs_diff": float(diff.mean()), "max_abs_diff": int(diff.max())}
            print(f"ablation {name}: {res['p50_s']:.3f}s (first call {res['first_call_s']:.2f}s)", file=sys.stderr)

        guarded(report, row, f"ablation {name}", measure)


def batch_sweep(report, engine, sweep, args, device):
    rows = report.data.setdefault("batch_sweep", [])
    for size, batches in sweep:
        base = None
        for b in batches:
            row = {"size": size, "batch": b}
            rows.append(row)

            def measure(size=size, b=b, row=row):
                nonlocal base
                res = time_engine(engine, dict(size=size, refs=1, concurrent=b), args.runs, args.warmup, device)
                per = res["p50_s"] / b
                base = per if b == 1 else base
                row.update({"p50_s": res["p50_s"], "per_image_s": per, "vs_batch1": (base or per) / per})

            guarded(report, row, f"batch sweep {size} x{b}", measure)
    report.data["suggested_batch_rule"] = suggested_rule(rows)
    report.save()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: the tiny model at small sizes")
    ap.add_argument("--cases", default="a,b,c,d", help="comma list of a,b,c,d; '' for none")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="bf16", help="bf16, fp8, or a list (bf16,fp8): each case is timed in each, in order")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--compile-scope", default="blocks", choices=["blocks", "model"])
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--ablation", nargs="?", const="fastpath", default=None, choices=["fastpath", "components"],
                    help="also time case (a) with the fast-path pieces added one by one: 'fastpath' (eager to regional "
                         "compile, CUDA graphs, whole-model compile; the default) or 'components' (cudnn.benchmark, "
                         "compiled VAE and text encoder, fused QKV, fp8 attention, on top of the default fast path)")
    ap.add_argument("--batch-sweep", action="store_true", help="per-image time by batch size (the batching rule's data)")
    ap.add_argument("--deterministic-cost", action="store_true", help="also time (d) with every request deterministic")
    ap.add_argument("--profile", default="", help="comma list of cases to profile once (top kernels)")
    ap.add_argument("--fp8-error", action="store_true", help="also report fp8-vs-bf16 denoiser error per step")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", default="", help="file name suffix, e.g. the stage: engine-<card>-<tag>.json")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    cases = TINY_CASES if args.tiny else FULL_CASES
    selected = [c for c in args.cases.split(",") if c]
    precisions = [p for p in args.precision.split(",") if p]
    name = "engine-" + slug_for(device, args.tiny) + (f"-{args.tag}" if args.tag else "")
    report = Report(args.out, name, {
        "machine": machine(device), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "software": software(), "dtype": str(dtype).replace("torch.", ""), "precisions": precisions,
        "model": "tiny" if args.tiny else "klein-4B architecture, random weights", "runs": args.runs, "warmup": args.warmup,
        "command": " ".join(["python", *sys.argv]), "compile_backend": args.compile_backend, "compile_scope": args.compile_scope,
        "compile": None, "matmul_peak_tflops": None, "cases": {}, "notes": []})
    report.save()  # even a crash while building the model leaves the environment on record
    t_build = time.perf_counter()
    tokenizer, lm, transformer, vae = build_components(device, dtype, args.tiny)
    report.data["build_s"] = time.perf_counter() - t_build
    report.data["matmul_peak_tflops"] = matmul_peak_tflops(device, dtype)
    scheduler_config = dict(tiny.SCHEDULER_CONFIG)
    if report.data["software"]["diffusers"] is None:
        args.no_diffusers = True
    report.save()

    # diffusers first: the engine's fast path converts the VAE to channels_last in place
    if not args.no_diffusers:
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

        pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config), vae=vae,
                                  text_encoder=lm, tokenizer=tokenizer, transformer=transformer, is_distilled=True)
        pipe.set_progress_bar_config(disable=True)
        for key in selected:
            entry = report.data["cases"].setdefault(key, {"description": DESCRIPTIONS[key], **cases[key]})

            def measure(key=key, entry=entry):
                entry["diffusers"] = time_diffusers(pipe, cases[key], args.runs, args.warmup, device)
                print(f"diffusers ({key}): {entry['diffusers']}", file=sys.stderr)

            guarded(report, entry, f"diffusers ({key})", measure)
        del pipe

    model = LoadedModel(model_id=report.data["model"], path=Path("."), device=device, dtype=dtype, tokenizer=tokenizer,
                        text_encoder=cut_text_encoder(lm), transformer=transformer, vae=vae, scheduler_config=scheduler_config)
    fp = FastPathOptions.for_device(device.type, compile=args.compile, compile_backend=args.compile_backend,
                                    compile_scope=args.compile_scope, precision="bf16")
    report.data["compile"] = fp.compile
    for precision in precisions:
        if precision == "fp8" and device.type != "cuda":
            report.data["notes"].append("fp8 skipped: it needs a CUDA device (torchao float8 matmuls)")
            report.save()
            continue
        if precision == "fp8" and args.fp8_error:
            def measure_error():
                bf16 = engine_for(model, FastPathOptions.for_device("cpu"))
                report.data["fp8_relative_error"] = fp8_relative_error(transformer, bf16, cases["a"]["size"], device)

            guarded(report, report.data, "fp8 error", measure_error)
        engine = None

        def build(precision=precision):
            nonlocal engine
            engine = engine_for(model, FastPathOptions.for_device(device.type, **{**fp.__dict__, "precision": precision}))

        guarded(report, report.data, f"engine ({precision})", build)
        if engine is None:
            continue
        for key in selected:
            case = cases[key]
            ckey = key if precision == "bf16" else f"{key}-{precision}"
            entry = report.data["cases"].setdefault(ckey, {"description": DESCRIPTIONS[key] + ("" if precision == "bf16" else f", {precision}"), **case})

            def measure(key=key, case=case, entry=entry):
                ks = time_engine(engine, case, args.runs, args.warmup, device)
                entry["kleinserve"] = ks
                flops = denoise_flops(transformer, case["size"], case["refs"], batch=case["concurrent"])
                entry["denoise_tflop"] = flops / 1e12
                entry["denoise_tflops"] = flops / (ks["stage_p50_ms"]["denoise_ms"] / 1000) / 1e12
                if "diffusers" in entry:
                    entry["speedup_vs_diffusers"] = entry["diffusers"]["p50_s"] / ks["p50_s"]
                print(f"kleinserve ({key}, {precision}): {ks}", file=sys.stderr)
                report.save()
                if case["concurrent"] > 1:
                    entry["unbatched"] = time_engine(engine, case, args.runs, args.warmup, device, batched=False)
                    entry["batched_throughput_x"] = entry["unbatched"]["p50_s"] / ks["p50_s"]
                    report.save()
                    if args.deterministic_cost:
                        try:  # the engine-wide mode: every request alone, torch's deterministic algorithms on
                            entry["deterministic"] = time_engine(engine_for(model, engine.fastpath, deterministic=True), case,
                                                                 args.runs, args.warmup, device, deterministic=True)
                        finally:
                            make_deterministic(False)  # the cases after this one measure the default mode
                            if device.type == "cuda":  # which also turned cuDNN autotuning off
                                torch.backends.cudnn.benchmark = engine.fastpath.cudnn_benchmark
                        entry["deterministic_cost_x"] = entry["deterministic"]["p50_s"] / ks["p50_s"]

            guarded(report, entry, f"kleinserve ({ckey})", measure)
            if key in [p for p in args.profile.split(",") if p] and precision == precisions[0]:
                def measure_profile(key=key, case=case):
                    report.data.setdefault("profile", {})[ckey] = profile_once(engine, case, device)

                guarded(report, entry, f"profile ({key})", measure_profile)
        if args.batch_sweep and precision == "bf16":
            batch_sweep(report, engine, TINY_SWEEP if args.tiny else FULL_SWEEP, args, device)
        del engine
    if args.ablation:
        ablation(report, model, cases["a"], args, device, args.ablation)
    report.save()
    print(markdown(report.data))
    js, md = report.paths
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
