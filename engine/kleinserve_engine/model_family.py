"""What one FLUX.2 [klein] checkpoint is: distilled or base, its sampling defaults and the text encoder it names.

Read from the checkpoint's own files (model_index.json, text_encoder/config.json, transformer/config.json), never
assumed from the 4B release, so the 9B checkpoints (a larger Qwen3) and the undistilled base checkpoints load
through the same code. The control plane learns these facts from `health` (docs/engine-protocol.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

# Layers of the Qwen3 stack the pipeline concatenates (Flux2KleinPipeline's text_encoder_out_layers default).
TEXT_LAYERS = (9, 18, 27)

# Distilled checkpoints are trained for 4 steps without guidance; base checkpoints for true classifier-free
# guidance. The base defaults are Flux2KleinPipeline's own call defaults (50 steps, guidance 4.0).
DISTILLED_STEPS, DISTILLED_MAX_STEPS = 4, 50
BASE_STEPS, BASE_MAX_STEPS = 50, 100
BASE_GUIDANCE, MAX_GUIDANCE = 4.0, 20.0
NO_GUIDANCE = 1.0


@dataclass(frozen=True)
class TextEncoderFacts:
    id: str  # the checkpoint's own text_encoder folder: "<model>/text_encoder"
    architecture: str
    hidden_size: int
    num_hidden_layers: int  # as shipped; the engine loads only up to max(layers)
    layers: tuple[int, ...]


@dataclass(frozen=True)
class ModelFacts:
    id: str
    pipeline: str
    is_distilled: bool
    default_steps: int
    max_steps: int
    default_guidance: float
    text_encoder: TextEncoderFacts

    @property
    def supports_guidance(self) -> bool:
        return not self.is_distilled

    @property
    def supports_negative_prompt(self) -> bool:
        # a negative prompt only enters through the unconditional pass of classifier-free guidance
        return not self.is_distilled

    def as_dict(self) -> dict:
        d = asdict(self)
        d["text_encoder"]["layers"] = list(self.text_encoder.layers)
        d["supports_guidance"] = self.supports_guidance
        d["supports_negative_prompt"] = self.supports_negative_prompt
        return d


class CheckpointMismatch(ValueError):
    """The checkpoint's parts do not fit together (e.g. a text encoder too small for the transformer)."""


def read_facts(path: Path, model_id: str) -> ModelFacts:
    index = json.loads((path / "model_index.json").read_text())
    te = json.loads((path / "text_encoder" / "config.json").read_text())
    tr = json.loads((path / "transformer" / "config.json").read_text())
    # Flux2KleinPipeline's own default when the index does not say: a checkpoint without the flag is a base one.
    distilled = bool(index.get("is_distilled", False))
    hidden, layers = int(te["hidden_size"]), int(te["num_hidden_layers"])
    if layers < max(TEXT_LAYERS):
        raise CheckpointMismatch(f"text encoder at {path / 'text_encoder'} has {layers} layers; the pipeline reads layer {max(TEXT_LAYERS)}")
    want = len(TEXT_LAYERS) * hidden
    if tr.get("joint_attention_dim") not in (None, want):
        raise CheckpointMismatch(
            f"transformer joint_attention_dim {tr['joint_attention_dim']} does not match the text encoder "
            f"({len(TEXT_LAYERS)} layers x hidden {hidden} = {want})"
        )
    arch = (index.get("text_encoder") or [None, None])[1] or (te.get("architectures") or ["unknown"])[0]
    return ModelFacts(
        id=model_id,
        pipeline=index.get("_class_name", "Flux2KleinPipeline"),
        is_distilled=distilled,
        default_steps=DISTILLED_STEPS if distilled else BASE_STEPS,
        max_steps=DISTILLED_MAX_STEPS if distilled else BASE_MAX_STEPS,
        default_guidance=NO_GUIDANCE if distilled else BASE_GUIDANCE,
        text_encoder=TextEncoderFacts(
            id=f"{model_id.rstrip('/')}/text_encoder", architecture=arch, hidden_size=hidden, num_hidden_layers=layers,
            layers=TEXT_LAYERS,
        ),
    )
