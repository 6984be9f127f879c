"""Classifier-free guidance for the base (undistilled) klein checkpoints, per request and per batch row.

Matches Flux2KleinPipeline: guidance applies only when the checkpoint is not distilled and guidance_scale > 1;
the unconditional pass reads the negative prompt (the pipeline's default is the empty prompt) with the same
image tokens, position ids and timestep; the two velocities combine as `neg + scale * (cond - neg)` on the noisy
tokens. Unlike the pipeline, the unconditional rows run in the same transformer call as every conditional row of
the batch, so requests with and without guidance (and with different scales) share one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import InvalidRequest
from .model_family import MAX_GUIDANCE, NO_GUIDANCE, ModelFacts


def uses_cfg(is_distilled: bool, scale: float) -> bool:
    return not is_distilled and scale > 1


def request_guidance(h: dict, model: ModelFacts | None, negative_prompt: str | None) -> float:
    """guidance_scale from a generate header (`guidance` is the older name) against the checkpoint's rules.

    A value the checkpoint would not use is refused rather than silently dropped: a distilled checkpoint takes
    only its default (1) and no negative prompt; a base checkpoint takes a negative prompt only with guidance > 1.
    """
    field = "guidance_scale" if "guidance_scale" in h else "guidance"
    value = h.get(field)
    if "guidance_scale" in h and "guidance" in h and h["guidance"] is not None and h["guidance"] != value:
        raise InvalidRequest("guidance: an older name of guidance_scale; send only one of them", "guidance")
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)):
        raise InvalidRequest(f"{field}: must be a number, got {value!r}", field)
    distilled = model.is_distilled if model is not None else True
    name = model.id if model is not None else "this checkpoint"
    if distilled:
        if value is not None and float(value) != NO_GUIDANCE:
            raise InvalidRequest(
                f"{field}: {name} is a distilled checkpoint and takes no classifier-free guidance; "
                f"omit it or send {NO_GUIDANCE:g} (got {value!r})", field)
        if negative_prompt:
            raise InvalidRequest(
                f"negative_prompt: {name} is a distilled checkpoint and takes no negative prompt; omit it or send \"\"",
                "negative_prompt")
        return NO_GUIDANCE
    scale = float(model.default_guidance if value is None else value)
    if not NO_GUIDANCE <= scale <= MAX_GUIDANCE:
        raise InvalidRequest(
            f"{field}: must be a number in [{NO_GUIDANCE:g}, {MAX_GUIDANCE:g}] (1 = no guidance), got {value!r}", field)
    if negative_prompt and not uses_cfg(False, scale):
        raise InvalidRequest("negative_prompt: only used with guidance_scale > 1; at 1 there is no unconditional pass",
                             "negative_prompt")
    return scale


@dataclass
class GuidancePlan:
    """Which rows of a denoise batch are guided, with what scale and negative embeddings.

    The transformer call carries every row once (conditional), then one extra row per guided row
    (unconditional), in `cfg_rows` order; `denoiser_rows()` maps each call row back to its batch row.
    """

    scales: list[float]
    cfg_rows: list[int]
    negative: object = None  # (len(cfg_rows), L, D) tensor, or None
    # the row index tensors on the device, uploaded once per plan rather than at every step
    _indices: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, scales: list[float], negatives: list, is_distilled: bool) -> "GuidancePlan":
        import torch

        cfg_rows = [r for r, s in enumerate(scales) if uses_cfg(is_distilled, s)]
        negative = torch.cat([negatives[r] for r in cfg_rows]) if cfg_rows else None
        return cls(list(scales), cfg_rows, negative)

    def select(self, keep: list[int]) -> "GuidancePlan":
        """The plan for the rows in `keep` (batch row indices, ascending), e.g. after a cancel."""
        import torch

        from .uploads import upload

        new_index = {r: i for i, r in enumerate(keep)}
        kept = [j for j, r in enumerate(self.cfg_rows) if r in new_index]
        negative = None
        if kept:
            negative = self.negative.index_select(0, upload(torch.tensor(kept, dtype=torch.long), self.negative.device))
        return GuidancePlan([self.scales[r] for r in keep], [new_index[self.cfg_rows[j]] for j in kept], negative)

    def denoiser_rows(self, batch: int) -> list[int]:
        return list(range(batch)) + self.cfg_rows

    def velocity(self, denoiser, hidden, text, t, img_ids, txt_ids, n_noisy: int):
        """The (guided) velocity of the noisy tokens for every row of `hidden`."""
        import torch

        if not self.cfg_rows:
            return denoiser(hidden, text, t, img_ids, txt_ids)[:, :n_noisy]
        b = hidden.shape[0]
        idx = self._index("cfg", self.cfg_rows, hidden.device)
        out = denoiser(torch.cat([hidden, hidden.index_select(0, idx)]), torch.cat([text, self.negative.to(text.dtype)]),
                       torch.cat([t, t.index_select(0, idx)]), img_ids, txt_ids)
        cond, uncond = out[:b, :n_noisy], out[b:, :n_noisy]
        guided = torch.empty_like(uncond)
        for scale in dict.fromkeys(self.scales[r] for r in self.cfg_rows):
            # one Python-float scale per group, as the pipeline computes it: same rounding in bf16 and fp32
            sel = self._index(scale, [j for j, r in enumerate(self.cfg_rows) if self.scales[r] == scale], idx.device)
            c, u = cond.index_select(0, idx.index_select(0, sel)), uncond.index_select(0, sel)
            guided.index_copy_(0, sel, u + scale * (c - u))
        return cond.index_copy(0, idx, guided)

    def _index(self, key, rows: list[int], device):
        import torch

        from .uploads import upload

        if key not in self._indices:
            self._indices[key] = upload(torch.tensor(rows, dtype=torch.long), device)
        return self._indices[key]
