"""Latent layout of FLUX.2: VAE latents (32ch, /8) -> 2x2 patches (128ch, /16) -> BatchNorm-normalised tokens.

Position ids are (t, h, w, l): text tokens (0, 0, 0, i); the output image t = 0; reference i t = 10 + 10*i.
"""

from __future__ import annotations

import torch


def patchify(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def pack(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c = x.shape
    return x.permute(0, 2, 1).reshape(b, c, h, w)


def bn_stats(vae, like: torch.Tensor):
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


def encode_reference(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] -> normalised (1, 128, H/16, W/16), using the posterior mean (no sampling)."""
    lat = vae.encode(pixels).latent_dist.mode()
    lat = patchify(lat)
    mean, std = bn_stats(vae, lat)
    return (lat - mean) / std


def decode(vae, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, 128) tokens -> (B, 3, 16h, 16w) pixels in [-1, 1]."""
    lat = unpack(tokens, h, w)
    mean, std = bn_stats(vae, lat)
    lat = unpatchify(lat * std + mean)
    return vae.decode(lat, return_dict=False)[0]


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3) on the pixels' device, rounding as diffusers' postprocess does."""
    x = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()
    return (x * 255).round().to(torch.uint8)


def _grid(t: int, h: int, w: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.tensor([t]), torch.arange(h), torch.arange(w), torch.arange(1))


def text_ids(length: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length))


def output_ids(h: int, w: int) -> torch.Tensor:
    return _grid(0, h, w)


def reference_ids(shapes: list[tuple[int, int]]) -> torch.Tensor:
    return torch.cat([_grid(10 + 10 * i, h, w) for i, (h, w) in enumerate(shapes)], dim=0)
