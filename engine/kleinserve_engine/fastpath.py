"""The CUDA fast path: compiled transformer blocks, best SDPA backend, channels_last bf16 VAE, optional FP8,
compiled VAE and text encoder (compiled_components.py), fused QKV projections (fused_qkv.py).

On by default on CUDA, off on CPU. Every piece is an opt-in wrapper around the eager modules, so the eager
path stays the reference and a test can compare the two (tests/test_fastpath.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .compiled_components import no_duck_shapes
from .errors import SetupRefused

log = logging.getLogger("kleinserve_engine.fastpath")


@dataclass
class FastPathOptions:
    compile: bool = False
    # "blocks": each repeated transformer block compiled on its own with dynamic batch and sequence dims, so one
    # graph per block type serves every batch size and aspect ratio (seconds to compile, no stall for an unwarmed
    # shape). "model": the whole transformer call compiled with static shapes, one graph per (batch, sequence)
    # bucket; kept so the benchmark can compare the two.
    compile_scope: str = "blocks"
    compile_backend: str = "inductor"
    # Inductor's default mode. "max-autotune-no-cudagraphs" may buy a few percent on the matmuls but autotunes
    # every shape bucket at startup (minutes each at 4B); plain CUDA-graph modes are avoided because their static
    # output buffers would be overwritten by the next batch while a result is still being decoded.
    compile_mode: str | None = None
    max_compiled_shapes: int = 32
    precision: str = "bf16"
    channels_last: bool = False
    sdpa_priority: bool = False
    # cuDNN autotunes each new convolution shape (the VAE's) once; never in deterministic mode (make_deterministic)
    cudnn_benchmark: bool = False
    # The VAE's encoder and decoder compiled with dynamic shapes, and the text encoder compiled whole (batch 1 and
    # one symbolic batch, 512 tokens): compiled_components.py. Off until the GPU ablation (gpu-run.sh stage 4)
    # shows what each buys against its compile time.
    compile_vae: bool = False
    compile_text_encoder: bool = False
    # One matmul for the double blocks' q/k/v and one for their added (text) q/k/v (fused_qkv.py); off until measured.
    fuse_qkv: bool = False
    # FP8 attention: refused in this build (fp8_attention_refusal says why)
    fp8_attention: bool = False

    @classmethod
    def for_device(cls, device_type: str, **overrides) -> "FastPathOptions":
        on_cuda = device_type == "cuda"
        base = cls(compile=on_cuda, channels_last=on_cuda, sdpa_priority=on_cuda, cudnn_benchmark=on_cuda)
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        if base.compile_backend != "inductor":
            base.compile_mode = None  # modes are an inductor notion
        if base.compile_scope not in ("blocks", "model"):
            raise ValueError(f"compile_scope: want 'blocks' or 'model', got {base.compile_scope!r}")
        return base


def configure_compile_cache(data_dir: Path) -> Path:
    """Persists inductor's compiled kernels under the data dir so a restart skips most of the compile."""
    cache = Path(data_dir) / "compile-cache"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    return cache


def load_mega_cache(cache_dir: Path) -> bool:
    import torch

    path = Path(cache_dir) / "mega-cache.bin"
    if not path.is_file() or not hasattr(torch.compiler, "load_cache_artifacts"):
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
        return True
    except Exception as exc:  # a cache from another torch build is useless, not fatal
        log.warning("ignoring compile cache %s: %s", path, exc)
        return False


def save_mega_cache(cache_dir: Path) -> None:
    import torch

    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return
    try:
        art = torch.compiler.save_cache_artifacts()
        if art is not None:
            (Path(cache_dir) / "mega-cache.bin").write_bytes(art[0])
    except Exception as exc:
        log.warning("could not save the compile cache: %s", exc)


FP8_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def fp8_target(module, fqn: str) -> bool:
    """Only the per-token linears inside the repeated blocks go to fp8: they carry nearly all the FLOPs. The
    modulation and timestep layers see one row per image (M = 1) and the embedders are small, so fp8 would only
    add quantisation error and scaling overhead there; they stay bf16."""
    import torch

    return isinstance(module, torch.nn.Linear) and fqn.split(".", 1)[0] in FP8_BLOCK_LISTS


def quantize_fp8(transformer) -> None:
    """Float8 dynamic activations with per-row weights (torchao) on the blocks' linears: about half their cost on H100."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise SetupRefused("--precision fp8 needs torchao (pip install 'kleinserve-engine[fp8]')") from exc
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_filter(transformer))


def fp8_filter(transformer):
    """fp8_target less the separate projections that a fused Linear replaces in this transformer (fused_qkv.py):
    they stay in the module tree for adapter names but never run, so converting them would only cost memory."""
    from .fused_qkv import fused_parts

    replaced = set(fused_parts(transformer))
    return lambda module, fqn: fp8_target(module, fqn) and fqn not in replaced


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (every compile and recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _bound_recompiles(limit: int) -> None:
    import torch._dynamo

    # Past the limit dynamo runs that frame eager and logs it rather than compiling forever.
    for knob in ("recompile_limit", "cache_size_limit"):  # the name changed across torch releases
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, limit)
    torch._logging.set_logs(recompiles=True)


def _with_compiled_blocks(transformer, opts: FastPathOptions):
    """A shallow copy of the transformer whose repeated blocks are compiled; the original stays eager.

    Blocks of one class share their forward code, so dynamo compiles one graph per class (weights are graph inputs)
    and reuses it for every layer. dynamic=True makes batch and sequence symbolic from the first compile; dynamo
    still specialises a size of 1, so a batch of one has its own graph (warm-up covers both).
    """
    import copy

    import torch

    no_duck_shapes()
    view = copy.copy(transformer)
    view._modules = dict(transformer._modules)
    for name in ("transformer_blocks", "single_transformer_blocks"):
        blocks = getattr(transformer, name)
        compiled = [torch.compile(b, backend=opts.compile_backend, mode=opts.compile_mode, dynamic=True) for b in blocks]
        view._modules[name] = torch.nn.ModuleList(compiled)
    return view


class Denoiser:
    """One transformer evaluation: (noisy+ref tokens, text, t, ids) -> velocity for every image token."""

    def __init__(self, transformer, opts: FastPathOptions, model=None):
        import torch

        self.transformer = transformer
        self.opts = opts
        # the components as the fast path runs them (the engine uses these): the loaded model itself, or a copy
        # holding compiled VAE / text encoder views and the fused-projection transformer, sharing all weights
        self.model = model
        self.compiled = False
        self._module = transformer
        self._fn = self._eager
        if opts.compile:
            _bound_recompiles(opts.max_compiled_shapes)
            if opts.compile_scope == "blocks":
                self._module = _with_compiled_blocks(transformer, opts)
            else:
                self._fn = torch.compile(self._eager, backend=opts.compile_backend, mode=opts.compile_mode, dynamic=False)
            self.compiled = True

    def _eager(self, hidden, text, t, img_ids, txt_ids):
        return self._module(
            hidden_states=hidden, encoder_hidden_states=text, timestep=t, img_ids=img_ids, txt_ids=txt_ids,
            guidance=None, return_dict=False,
        )[0]

    def __call__(self, hidden, text, t, img_ids, txt_ids):
        before = compiled_graphs() if self.compiled else 0
        out = self._fn(hidden, text, t, img_ids, txt_ids)
        if self.compiled and compiled_graphs() != before:
            log.info("compiled %d graph(s) for batch %d, %d image tokens (%s scope)", compiled_graphs() - before,
                     hidden.shape[0], hidden.shape[1], self.opts.compile_scope)
        return out


def attention_context(opts: FastPathOptions):
    """Prefers cuDNN, then flash, then memory-efficient attention; math stays as the last resort."""
    if not opts.sdpa_priority:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch without priority ordering: let it choose
        return contextlib.nullcontext()


def fp8_attention_refusal(device) -> str:
    """Why --fp8-attention cannot run here. The only FP8 attention kernel that torch 2.11 and torchao 0.17 reach
    is FlashAttention-3's: torchao's apply_low_precision_attention and torch's quantized SDPA both go through
    torch.nn.attention.activate_flash_attention_impl("FA3"), which loads the flash_attn_interface package."""
    if getattr(device, "type", str(device)) != "cuda":
        return "--fp8-attention needs a CUDA device"
    return ("--fp8-attention is not available in this build: the FP8 attention kernel torch 2.11 and torchao 0.17 "
            "offer is FlashAttention-3's (torchao.prototype.attention.apply_low_precision_attention), which needs the "
            "flash_attn_interface package, built from source for Hopper and not in the GPU image (engine/README.md)")


def prepare(model, opts: FastPathOptions) -> Denoiser:
    """The denoiser, and in `Denoiser.model` the components the engine runs (see Denoiser.__init__)."""
    import dataclasses

    import torch

    from .compiled_components import compiled_text_encoder, compiled_vae
    from .fused_qkv import with_fused_qkv

    if model.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = opts.cudnn_benchmark
    if opts.fp8_attention:
        raise SetupRefused(fp8_attention_refusal(model.device))
    if opts.precision == "fp8" and model.device.type != "cuda":
        raise SetupRefused("--precision fp8 needs a CUDA device")
    # fused first: the fp8 filter then sees to_qkv, and quantizes the Linears the forward runs
    transformer = with_fused_qkv(model.transformer) if opts.fuse_qkv else model.transformer
    if opts.precision == "fp8":
        quantize_fp8(transformer)
    if opts.channels_last:  # before the VAE is compiled, so its graphs trace the channels_last weights
        model.vae.to(memory_format=torch.channels_last)
    if opts.compile_vae or opts.compile_text_encoder:
        _bound_recompiles(opts.max_compiled_shapes)
    vae = compiled_vae(model.vae, opts.compile_backend) if opts.compile_vae else model.vae
    text_encoder = (compiled_text_encoder(model.text_encoder, opts.compile_backend) if opts.compile_text_encoder
                    else model.text_encoder)
    view = model
    if transformer is not model.transformer or vae is not model.vae or text_encoder is not model.text_encoder:
        view = dataclasses.replace(model, transformer=transformer, vae=vae, text_encoder=text_encoder)
    return Denoiser(transformer, opts, model=view)


def make_deterministic(on: bool = True) -> None:
    """torch's deterministic algorithms where it has them, cuDNN without autotuning; `on=False` undoes it.

    Ops without a deterministic kernel warn instead of failing (warn_only): the engine keeps serving, and the log
    names the op. cuBLAS needs a fixed workspace for reproducible results; the variable only takes effect if it is
    set before cuBLAS starts, which the CLI does for --deterministic.
    """
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # off restores torch's defaults exactly (warn_only too): compiled graphs guard on this state, and a leftover
    # warn_only would recompile every block once more
    torch.use_deterministic_algorithms(on, warn_only=on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def upload_image(image, device, dtype):
    """(1, 3, H, W) VAE input in [-1, 1] on `device`, channels_last, from a PIL RGB image.

    On CUDA the image travels as uint8 (a quarter of the float32 bytes) through pinned memory without blocking,
    and is normalised there in float32, the same arithmetic as preprocess.to_tensor on the CPU, so both give the
    same values. Elsewhere it is preprocess.to_tensor as before.
    """
    import numpy as np
    import torch

    from .preprocess import to_tensor

    if getattr(device, "type", str(device)) != "cuda":
        return to_tensor(image).to(device, dtype)
    hwc = torch.from_numpy(np.array(image, dtype=np.uint8))
    return normalise_uint8(hwc.pin_memory().to(device, non_blocking=True)).to(dtype)


def normalise_uint8(hwc):
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1], channels_last: to_tensor's arithmetic, on any device."""
    nchw = hwc.permute(2, 0, 1).unsqueeze(0)  # a channels_last view, as to_tensor's
    return nchw.float() / 255.0 * 2.0 - 1.0
