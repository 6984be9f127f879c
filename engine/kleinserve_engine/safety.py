"""The opt-in safety checker: an image classifier run on every output image of a batch, after decode.

Any transformers image classifier works (AutoModelForImageClassification + AutoImageProcessor), loaded from a
directory or a Hugging Face repo id like the main model. An image's score is the probability mass of the labels
counted as unsafe; it is flagged when the score reaches the threshold. What a flag does is the operator's policy:
`flag` only reports it, `blur` returns a heavily blurred image, `fail` answers NSFW_CONTENT with no image.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidRequest, ModelUnavailable, NsfwContent

log = logging.getLogger("kleinserve_engine.safety")

POLICIES = ("flag", "blur", "fail")
DEFAULT_UNSAFE_LABELS = r"nsfw|unsafe|porn|hentai|sexy"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class SafetyOptions:
    model: str  # a directory or a Hugging Face repo id
    policy: str = "flag"
    threshold: float = DEFAULT_THRESHOLD
    unsafe_labels: str = DEFAULT_UNSAFE_LABELS  # a regular expression matched against the classifier's labels
    allow_opt_out: bool = False

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"--safety-policy must be one of {'|'.join(POLICIES)}, got {self.policy!r}")
        if not self.threshold >= 0:
            raise ValueError(f"--safety-threshold must be a number >= 0, got {self.threshold!r}")
        try:
            re.compile(self.unsafe_labels)
        except re.error as exc:
            raise ValueError(f"--safety-labels is not a regular expression: {exc}") from None


@dataclass(frozen=True)
class Verdict:
    nsfw: bool
    score: float

    def as_dict(self) -> dict:
        return {"nsfw": self.nsfw, "nsfw_score": round(self.score, 6)}


def check_opt_out(requested: bool, allow_opt_out: bool) -> None:
    """A request may skip the checker only where the operator started the engine with --allow-safety-opt-out."""
    if not requested and not allow_opt_out:
        raise InvalidRequest(
            "safety_checker: this engine does not allow turning the safety checker off "
            "(the operator can allow it with --allow-safety-opt-out)", "safety_checker")


def _locate(source: str) -> Path:
    where = Path(os.path.expanduser(source))
    if where.is_dir():
        if not (where / "config.json").is_file():
            raise ModelUnavailable(f"safety checker not found at {where}: the directory has no config.json "
                                   "(save an image classifier there with save_pretrained)")
        return where
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise ModelUnavailable(f"safety checker not found at {where}: no such directory, and not a Hugging Face repo id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:  # offline, gated or unknown repo: there is no checker to run
        raise ModelUnavailable(f"safety checker {source!r} could not be fetched from Hugging Face ({type(exc).__name__}); "
                               "pass a local directory or make the repo reachable") from None


def blur(pixels: np.ndarray) -> np.ndarray:
    """A blur strong enough that nothing of the content is recognisable: radius 1/16 of the longer side."""
    from PIL import Image, ImageFilter

    h, w = pixels.shape[:2]
    radius = max(8.0, max(h, w) / 16)
    return np.asarray(Image.fromarray(pixels, "RGB").filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)


class SafetyChecker:
    def __init__(self, model, processor, unsafe_ids: list[int], options: SafetyOptions, device):
        self.model = model
        self.processor = processor
        self.unsafe_ids = unsafe_ids
        self.options = options
        self.device = device
        self.multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
        self.checks = self.flags = None  # prometheus counters once attached

    @property
    def policy(self) -> str:
        return self.options.policy

    @classmethod
    def load(cls, options: SafetyOptions, device) -> "SafetyChecker":
        path = _locate(options.model)
        try:
            from transformers import AutoModelForImageClassification
            # From its module, not the package: without torchvision, transformers 5.17's top-level AutoImageProcessor
            # is a placeholder that refuses to load, while the class itself falls back to the PIL processors.
            from transformers.models.auto.image_processing_auto import AutoImageProcessor

            model = AutoModelForImageClassification.from_pretrained(path)
            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailable(f"safety checker at {path} is not a transformers image classifier ({exc})") from None
        labels = {int(i): str(name) for i, name in model.config.id2label.items()}
        pattern = re.compile(options.unsafe_labels, re.IGNORECASE)
        unsafe = sorted(i for i, name in labels.items() if pattern.search(name))
        if not unsafe:
            raise ModelUnavailable(
                f"safety checker at {path}: none of its labels {sorted(labels.values())} matches the unsafe-label "
                f"pattern {options.unsafe_labels!r}; name the unsafe ones with --safety-labels")
        log.info("safety checker %s: unsafe labels %s, policy %s, threshold %g", options.model,
                 [labels[i] for i in unsafe], options.policy, options.threshold)
        return cls(model.to(device).eval().requires_grad_(False), processor, unsafe, options, device)

    def attach_metrics(self, registry) -> None:
        from prometheus_client import Counter

        p = "kleinserve_engine_safety_"
        self.checks = Counter(p + "checks", "output images classified by the safety checker", registry=registry)
        self.skipped = Counter(p + "skipped", "output images whose request opted out of the safety checker", registry=registry)
        self.flags = Counter(p + "flagged", "output images flagged unsafe, by the policy applied", ["policy"], registry=registry)

    def scores(self, images: list[np.ndarray]) -> list[float]:
        """One batched classifier call over uint8 (H, W, 3) images of any size."""
        import torch

        inputs = self.processor(images=list(images), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        unsafe = probs[:, self.unsafe_ids]
        score = unsafe.max(dim=-1).values if self.multi_label else unsafe.sum(dim=-1)
        return [float(s) for s in score.cpu()]

    def screen(self, pixels, wanted: list[bool]) -> list[Verdict | None]:
        """Verdicts for the rows of `pixels` (N, H, W, 3) whose request wants the check; rows not checked get None.
        The classifier call is batched over the rows; what a verdict does to an image is `apply`'s, per image."""
        rows = [r for r, want in enumerate(wanted) if want]
        verdicts: list[Verdict | None] = [None] * len(wanted)
        if self.checks is not None:
            self.skipped.inc(len(wanted) - len(rows))
        if not rows:
            return verdicts
        for r, score in zip(rows, self.scores([pixels[r] for r in rows])):
            verdicts[r] = Verdict(score >= self.options.threshold, score)
        if self.checks is not None:
            self.checks.inc(len(rows))
            n = sum(1 for v in verdicts if v is not None and v.nsfw)
            if n:
                self.flags.labels(self.policy).inc(n)
        return verdicts

    def apply(self, pixels: np.ndarray, verdict: Verdict | None) -> np.ndarray:
        """The image a verdict lets through: blurred when flagged under the blur policy, else `pixels` itself."""
        if verdict is not None and verdict.nsfw and self.policy == "blur":
            return blur(pixels)
        return pixels

    def refusal(self, verdicts: list[Verdict | None]) -> NsfwContent | None:
        """Under the fail policy, the error a request answers when any of its images was flagged."""
        flagged = [i for i, v in enumerate(verdicts) if v is not None and v.nsfw]
        if self.policy != "fail" or not flagged:
            return None
        return NsfwContent(f"the safety checker flagged output image{'s' if len(flagged) > 1 else ''} "
                           f"{', '.join(map(str, flagged))} of this request; no image is returned")


def build_tiny_checker(out_dir: str | Path, seed: int = 20260125) -> Path:
    """A random-weight ViT classifier with labels (normal, nsfw), saved with save_pretrained: built offline, loaded
    through the same path as a real checker. Its scores mean nothing; tests pick thresholds 0 and > 1."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, id2label={0: "normal", 1: "nsfw"},
                       label2id={"normal": 0, "nsfw": 1})
    ViTForImageClassification(config).eval().save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out
