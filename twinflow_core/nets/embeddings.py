"""Time conditioning shared by every net: a signed-time embedding and the gated target-time embedding.

The TwinFlow network reads signed t: t < 0 selects the twin (fake) velocity field, so the embedding of -t must
differ from that of t. Sinusoids of t itself (not |t|) do this: the sine half is odd in t.
The target time r enters through `emb1(t) + emb2(r) * (t - r)` (the official `aux_time_embed`): at r = t the
gate closes and the net is a plain velocity model, exactly as in flow matching.

`time_sign` chooses how the sign reaches the network:
- "signed" (the official SD3.5 / Qwen-Image code): sinusoids of the signed t and r.
- "learned": sinusoids of |t| and |r| plus a learned vector added when t < 0, initialised to zero (the
  SimpleTuner port's sign embedding). A flow-matching base never sees t < 0, so with "signed" its twin
  field starts as whatever the untrained negative half of the embedding gives, and the first rectify
  targets dv = F(y,-s,-s) - F(y,s,s) are noise; with "learned" the twin field starts as a copy of the real
  one (dv = 0) and the gap grows only as the twin branch learns the generator's samples. The vector is
  created without drawing random numbers, so a net initialises the same with either setting.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(w t), sin(w t)] for log-spaced w; t of shape (B,), any sign. Output (B, dim)."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    """Sinusoids of signed t followed by a 2-layer MLP (as in DiT's TimestepEmbedder)."""

    def __init__(self, dim: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim))


TIME_SIGNS = ("signed", "learned")


class TimePairEmbedding(nn.Module):
    """emb_t(t) + emb_r(r) * (t - r) (+ the sign vector when t < 0): the conditioning vector for F(x, t, r)."""

    def __init__(self, dim: int, freq_dim: int = 64, time_sign: str = "signed"):
        super().__init__()
        if time_sign not in TIME_SIGNS:
            raise ValueError(f"time_sign {time_sign!r} is not one of {TIME_SIGNS}")
        self.time_sign = time_sign
        self.emb_t = TimeEmbedding(dim, freq_dim)
        self.emb_r = TimeEmbedding(dim, freq_dim)
        if time_sign == "learned":
            self.negative = nn.Parameter(torch.zeros(dim))

    def forward(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        gate = (t - r).float()[:, None]
        if self.time_sign == "signed":
            return self.emb_t(t) + self.emb_r(r) * gate
        sign = (t < 0).to(self.negative.dtype)[:, None]
        return self.emb_t(t.abs()) + self.emb_r(r.abs()) * gate + sign * self.negative


R_EMBED_INITS = ("keep", "normal", "copy", "copy_t")  # copy_t: the old name of copy


def reinit_target_time_embedding(net: nn.Module, mode: str) -> int:
    """Re-initialise the target-time (r) embedding of every TimePairEmbedding in `net`; returns how many.

    A flow-matching base trains with r = t, where the gate (t - r) is 0, so its r embedding never gets a gradient
    and enters TwinFlow fine-tuning as it was constructed. The official code re-initialises its second embedder
    when TwinFlow training starts:
    - "normal": weights N(0, 0.02), biases 0 (SD3.5 / SANA `init_time_embed_2_weights`);
    - "copy" (formerly "copy_t"): a copy of the t embedding (Qwen-Image);
    - "keep": leave it as it is (here: PyTorch's default Linear init from the net's construction).
    Draws from torch's global generator for "normal": seed it first for a reproducible start.
    """
    if mode not in R_EMBED_INITS:
        raise ValueError(f"r embedding init {mode!r} is not one of {R_EMBED_INITS}")
    found = [m for m in net.modules() if isinstance(m, TimePairEmbedding)]
    if mode == "keep":
        return len(found)
    with torch.no_grad():
        for pair in found:
            if mode in ("copy", "copy_t"):
                pair.emb_r.load_state_dict(pair.emb_t.state_dict())
                continue
            for layer in pair.emb_r.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, mean=0.0, std=0.02)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
    return len(found)
