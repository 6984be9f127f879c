"""Command line: `serve` (the engine process the control plane spawns) and `make-tiny-model DIR`.

Imports stay light until the socket is bound: torch and diffusers load in the inference thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from .batcher import DEFAULT_BATCH_RULE, BatchRule
from .errors import ModelUnavailable


def default_data_dir() -> Path:
    return Path(os.environ.get("KLEINSERVE_DATA") or Path(tempfile.gettempdir()) / "kleinserve-data")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kleinserve_engine", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve engine protocol v1 on a socket")
    s.add_argument("--model", default="black-forest-labs/FLUX.2-klein-4B",
                   help="diffusers-layout DIR, HF repo id, 'tiny' or 'tiny-base' (random-weight distilled / base test models)")
    s.add_argument("--listen", required=True, help="unix:PATH or tcp:HOST:PORT (port 0 picks a free one)")
    s.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "fp32", "bf16"],
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    s.add_argument("--max-batch", type=int, default=4, help="most transformer rows denoised together, a guided image counting two (caps --batch-rule)")
    s.add_argument("--batch-rule", default=DEFAULT_BATCH_RULE,
                   help="largest batch per output size in transformer rows, WxH:N,... (an output gets the N of the smallest listed size that "
                        "holds it, 1 above all); requests batch only when they queued while the GPU was busy; 'none': never")
    s.add_argument("--prompt-cache-mb", type=float, default=256)
    s.add_argument("--ref-cache-mb", type=float, default=512)
    s.add_argument("--max-ref-pixels", type=int, default=1024 * 1024, help="pixel cap per reference after downscaling")
    s.add_argument("--max-output-pixels", type=int, default=4 * 1024 * 1024)
    s.add_argument("--compile", dest="compile", action="store_true", default=None, help="torch.compile the transformer (default on CUDA)")
    s.add_argument("--no-compile", dest="compile", action="store_false")
    s.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor; aot_eager for cheap checks)")
    s.add_argument("--compile-scope", default="blocks", choices=["blocks", "model"],
                   help="blocks: each transformer block compiled once with dynamic batch/sequence (default); "
                        "model: the whole transformer, static shapes, one graph per warmed bucket")
    s.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: inductor's)")
    s.add_argument("--precision", default="bf16", choices=["bf16", "fp8"], help="fp8: torchao float8 on CUDA (experimental)")
    for flag, dest, what in (
            ("compile-vae", "compile_vae", "torch.compile the VAE encoder and decoder, dynamic shapes (default off until measured)"),
            ("compile-text-encoder", "compile_text_encoder", "torch.compile the text encoder, batch 1 + one symbolic batch (default off until measured)"),
            ("cudnn-benchmark", "cudnn_benchmark", "cuDNN autotuning per convolution shape (default on for CUDA; never with --deterministic)"),
            ("fuse-qkv", "fuse_qkv", "one q/k/v matmul per stream in the double blocks (default off until measured)")):
        s.add_argument(f"--{flag}", dest=dest, action="store_true", default=None, help=what)
        s.add_argument(f"--no-{flag}", dest=dest, action="store_false")
    s.add_argument("--fp8-attention", action="store_true", help="FP8 attention: refused in this build (needs FlashAttention-3; see README)")
    s.add_argument("--deterministic", action="store_true",
                   help="every request alone, with torch's deterministic algorithms: the same input and seed give the "
                        "same bytes run after run (costs batching; see README)")
    s.add_argument("--warmup", default="auto", help="WxH:REFS,... buckets to warm before ready; 'auto' (CUDA defaults) or 'none'")
    s.add_argument("--data-dir", type=Path, default=None, help="compile caches and the tiny model ($KLEINSERVE_DATA)")
    s.add_argument("--tiny-dir", type=Path, default=None, help="where --model tiny is built (default DATA_DIR/tiny-model)")
    s.add_argument("--threads", type=int, default=int(os.environ.get("KLEINSERVE_TORCH_THREADS", "0")),
                   help="CPU intra-op threads (default 1 on CPU: the tiny model gains little and shared cores lose a lot)")
    s.add_argument("--safety-checker", default=None, metavar="MODEL",
                   help="image classifier (DIR or HF repo id, transformers AutoModelForImageClassification) run on every output")
    s.add_argument("--safety-policy", default="flag", choices=["flag", "blur", "fail"],
                   help="what a flagged image gets: reported only, blurred, or the request fails with NSFW_CONTENT")
    s.add_argument("--safety-threshold", type=float, default=0.5, help="unsafe score at or above which an image is flagged")
    s.add_argument("--safety-labels", default=None, metavar="REGEX",
                   help="classifier labels that count as unsafe (case-insensitive regex; default nsfw|unsafe|porn|hentai|sexy)")
    s.add_argument("--allow-safety-opt-out", action="store_true", help="let a request skip the checker with safety_checker:false")
    s.add_argument("--lora-max-rank", type=int, default=128, help="largest LoRA rank accepted")
    s.add_argument("--lora-max-mb", type=float, default=1024, help="largest LoRA file accepted")
    s.add_argument("--lora-cache-mb", type=float, default=2048, help="host memory for converted adapters (LRU by content hash)")
    s.add_argument("--lora-gpu-cache-mb", type=float, default=1024, help="GPU memory for adapters (LRU by content hash)")
    s.add_argument("--exit-with-stdin", action="store_true", help="exit when stdin closes (set by a supervising parent)")
    s.add_argument("--log-level", default=os.environ.get("KLEINSERVE_LOG_LEVEL", "INFO"))

    t = sub.add_parser("make-tiny-model", help="write a random-weight tiny klein in diffusers layout")
    t.add_argument("dir", type=Path)
    t.add_argument("--base", action="store_true", help="mark it a base checkpoint (is_distilled false: classifier-free guidance)")

    c = sub.add_parser("make-tiny-safety-checker", help="write a random-weight tiny image classifier (labels normal, nsfw)")
    c.add_argument("dir", type=Path)
    return p


def _fail(message: str) -> int:
    sys.__stdout__.write(json.dumps({"event": "failed", "code": "MODEL_UNAVAILABLE", "message": message}) + "\n")
    sys.__stdout__.flush()
    print(f"kleinserve-engine: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            BatchRule.parse(args.batch_rule, args.max_batch)
        except ValueError as exc:
            parser.error(f"--batch-rule/--max-batch: {exc}")
        if args.fp8_attention:  # refused on every device in this build: say so before loading anything
            from .fastpath import fp8_attention_refusal

            parser.error(fp8_attention_refusal("cuda"))
    if args.command == "make-tiny-model":
        from .tiny import make_tiny_model

        print(make_tiny_model(args.dir, distilled=not args.base))
        return 0
    if args.command == "make-tiny-safety-checker":
        from .safety import build_tiny_checker

        print(build_tiny_checker(args.dir))
        return 0

    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts, so before torch loads
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from .server import ServeConfig, serve

    data_dir = args.data_dir or default_data_dir()
    cfg = ServeConfig(
        model=args.model, tiny_dir=args.tiny_dir or data_dir / "tiny-model", listen=args.listen, device=args.device, dtype=args.dtype, max_batch=args.max_batch,
        batch_rule=args.batch_rule, prompt_cache_mb=args.prompt_cache_mb, ref_cache_mb=args.ref_cache_mb,
        max_ref_pixels=args.max_ref_pixels, max_output_pixels=args.max_output_pixels, compile=args.compile,
        compile_backend=args.compile_backend, compile_mode=args.compile_mode, compile_scope=args.compile_scope, precision=args.precision, warmup=args.warmup, data_dir=data_dir,
        compile_vae=args.compile_vae, compile_text_encoder=args.compile_text_encoder, cudnn_benchmark=args.cudnn_benchmark,
        fuse_qkv=args.fuse_qkv, fp8_attention=args.fp8_attention,
        oom_prompt=os.environ.get("KLEINSERVE_TEST_OOM_PROMPT"), threads=args.threads,
        exit_with_stdin=args.exit_with_stdin, deterministic=args.deterministic,
    )
    if args.safety_checker:
        from .safety import DEFAULT_UNSAFE_LABELS, SafetyOptions

        try:
            cfg.safety = SafetyOptions(args.safety_checker, policy=args.safety_policy, threshold=args.safety_threshold,
                                       unsafe_labels=args.safety_labels or DEFAULT_UNSAFE_LABELS,
                                       allow_opt_out=args.allow_safety_opt_out)
        except ValueError as exc:
            print(f"kleinserve-engine: {exc}", file=sys.stderr)
            return 1
    cfg.allow_safety_opt_out = args.allow_safety_opt_out
    from .lora.spec import LoraOptions

    cfg.lora = LoraOptions(max_rank=args.lora_max_rank, max_mb=args.lora_max_mb, host_cache_mb=args.lora_cache_mb,
                           device_cache_mb=args.lora_gpu_cache_mb)
    try:
        return asyncio.run(serve(cfg))
    except ModelUnavailable as exc:
        return _fail(str(exc))
    except (OSError, ValueError) as exc:  # cannot bind --listen: a configuration error, not a crash
        print(f"kleinserve-engine: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
