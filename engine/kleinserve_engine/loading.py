"""Loads FLUX.2 [klein] components from a diffusers-layout directory or a Hugging Face repo id.

The text encoder is built with only the layers the pipeline reads (27 of Qwen3-4B's 36), so the cut layers are
neither run nor held in memory: their weights are skipped at load time.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelUnavailable

log = logging.getLogger("kleinserve_engine.loading")

DEFAULT_MODEL = "black-forest-labs/FLUX.2-klein-4B"
TEXT_LAYERS = (9, 18, 27)
COMPONENTS = ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")


@dataclass
class LoadedModel:
    model_id: str
    path: Path
    device: Any
    dtype: Any
    tokenizer: Any
    text_encoder: Any  # the Qwen3 decoder stack (no LM head), cut after max(TEXT_LAYERS)
    transformer: Any
    vae: Any
    scheduler_config: dict
    text_layers: tuple[int, ...] = TEXT_LAYERS
    extras: dict = field(default_factory=dict)
    facts: Any = None  # model_family.ModelFacts: distilled or base, defaults, the text encoder it names

    @property
    def is_distilled(self) -> bool:
        return self.facts is None or self.facts.is_distilled


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} was requested but CUDA is not available on this machine")
    return torch.device("cuda:0" if device == "cuda" else device)


def resolve_dtype(dtype: str | None, device):
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of float32|bfloat16|auto, got {dtype!r}")
    return table[dtype]


def _how_to_provide(tried: str) -> str:
    return (
        f"FLUX.2 [klein] weights not found at {tried}. Provide them in one of these ways: pass a local "
        "diffusers-layout directory with --model DIR; or set HF_TOKEN (and accept the model licence on "
        "huggingface.co) so the repo can be downloaded; or run `huggingface-cli download "
        f"{DEFAULT_MODEL} --local-dir DIR` and pass --model DIR; or use --model tiny for a random-weight test model."
    )


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or os.sep in model.strip("/").split("/", 2)[-1] or model.count("/") != 1


def locate(model: str) -> Path:
    """Returns a local diffusers-layout directory for a path or repo id, downloading the repo if needed."""
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelUnavailable(_how_to_provide(f"{local} (no model_index.json)"))
        return local
    if _looks_like_path(model):
        raise ModelUnavailable(_how_to_provide(f"{local} (no such directory)"))
    try:
        from huggingface_hub import snapshot_download

        patterns = ["model_index.json"] + [f"{c}/*" for c in COMPONENTS]
        return Path(snapshot_download(model, allow_patterns=patterns))
    except Exception as exc:  # any hub failure (offline, gated, unknown repo) means: no weights
        raise ModelUnavailable(_how_to_provide(f"Hugging Face repo {model!r} ({type(exc).__name__}: {exc})")) from None


def _load_text_encoder(path: Path, dtype, device, deepest: int):
    import torch
    from transformers import AutoConfig, Qwen3ForCausalLM

    config = AutoConfig.from_pretrained(path / "text_encoder")
    if config.num_hidden_layers < deepest:
        raise ModelUnavailable(f"text encoder at {path / 'text_encoder'} has {config.num_hidden_layers} layers, need {deepest}")
    config.num_hidden_layers = deepest
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:deepest]
    from transformers.utils import logging as hf_logging

    # The skipped layers are reported as "unexpected keys": that is the point of the cut, not a problem.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        lm = Qwen3ForCausalLM.from_pretrained(path / "text_encoder", config=config, dtype=dtype)
    finally:
        hf_logging.set_verbosity(previous)
    decoder = lm.model
    # The pipeline reads raw layer outputs; with the stack cut at the deepest needed layer, the final norm would
    # otherwise be applied to that layer's output.
    decoder.norm = torch.nn.Identity()
    del lm
    return decoder.to(device).eval().requires_grad_(False)


def load(model: str = DEFAULT_MODEL, device: str = "auto", dtype: str | None = None, model_id: str | None = None) -> LoadedModel:
    path = locate(model)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    try:
        from .model_family import CheckpointMismatch, read_facts

        facts = read_facts(path, model_id or model)
    except (OSError, KeyError, ValueError) as exc:
        detail = str(exc) if isinstance(exc, CheckpointMismatch) else f"unreadable config: {exc}"
        raise ModelUnavailable(f"{path} is not a usable FLUX.2 [klein] checkpoint: {detail}") from None
    try:
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        text_encoder = _load_text_encoder(path, dt, dev, max(TEXT_LAYERS))
        transformer = Flux2Transformer2DModel.from_pretrained(path / "transformer", torch_dtype=dt)
        vae = AutoencoderKLFlux2.from_pretrained(path / "vae", torch_dtype=dt)
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, EnvironmentError) as exc:
        raise ModelUnavailable(_how_to_provide(f"{path} ({exc})")) from None
    transformer = transformer.to(dev).eval().requires_grad_(False)
    vae = vae.to(dev).eval().requires_grad_(False)
    log.info("loaded %s on %s as %s", model_id or model, dev, dt)
    return LoadedModel(
        model_id=model_id or model,
        path=path,
        device=dev,
        dtype=dt,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler_config=scheduler_config,
        text_layers=facts.text_encoder.layers,
        facts=facts,
    )
