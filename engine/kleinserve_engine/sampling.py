"""Flow-matching Euler sampling for FLUX.2: seeded noise, resolution-shifted sigmas and steps that move only the noisy
tokens."""

from __future__ import annotations

import math

import numpy as np
import torch


def seeded_noise(seeds: list[int], h: int, w: int, dtype, pin: bool = False) -> torch.Tensor:
    """(len(seeds), 128, h, w) latent noise, image i drawn on the CPU from a generator of its own seed, so a seed gives
    the same image on any device and in any batch position. pin: page-locked, so the copy to a GPU can be
    non-blocking."""
    out = torch.empty((len(seeds), 128, h, w), dtype=dtype, pin_memory=pin)
    for i, seed in enumerate(seeds):
        g = torch.Generator("cpu").manual_seed(seed)
        out[i : i + 1] = torch.randn((1, 128, h, w), generator=g, dtype=dtype)
    return out


def empirical_mu(seq_len: int, steps: int) -> float:
    # BFL's fit of the best shift against (image tokens, steps); above ~4300 tokens it no longer depends on steps.
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if seq_len > 4300:
        return float(a2 * seq_len + b2)
    m_200 = a2 * seq_len + b2
    m_10 = a1 * seq_len + b1
    a = (m_200 - m_10) / 190.0
    return float(a * steps + m_200 - 200.0 * a)


def sigmas(config: dict, steps: int, seq_len: int) -> torch.Tensor:
    """steps+1 float32 sigmas from 1 to 0; float32 arithmetic as in diffusers' scheduler so results match it."""
    s = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
    if config.get("use_dynamic_shifting"):
        mu = empirical_mu(seq_len, steps)
        if config.get("time_shift_type", "exponential") == "exponential":
            s = math.exp(mu) / (math.exp(mu) + (1 / s - 1) ** 1.0)
        else:
            s = mu / (mu + (1 / s - 1) ** 1.0)
    else:
        shift = config.get("shift", 1.0)
        s = shift * s / (1 + (shift - 1) * s)
    unsupported = [k for k in ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling") if config.get(k)]
    if unsupported:
        raise ValueError(f"scheduler options not supported by the engine: {unsupported}")
    return torch.cat([torch.from_numpy(np.asarray(s, dtype=np.float32)), torch.zeros(1)])


def timestep(sig: torch.Tensor, batch: int, dtype) -> torch.Tensor:
    # The model takes t in [0, 1]; going through t*1000 and back keeps bit-equality with the reference pipeline.
    return (sig * 1000).expand(batch).to(dtype) / 1000


def euler(x: torch.Tensor, v: torch.Tensor, sig: torch.Tensor, sig_next: torch.Tensor) -> torch.Tensor:
    return (x.float() + (sig_next - sig) * v).to(v.dtype)
