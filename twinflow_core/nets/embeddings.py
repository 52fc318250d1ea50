"""Time conditioning shared by every net: a signed-time embedding and the gated target-time embedding.

The TwinFlow network reads signed t: t < 0 selects the twin (fake) velocity field, so the embedding of -t must
differ from that of t. Sinusoids of t itself (not |t|) do this: the sine half is odd in t.
The target time r enters through `emb1(t) + emb2(r) * (t - r)` (the official `aux_time_embed`): at r = t the
gate closes and the net is a plain velocity model, exactly as in flow matching.
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


class TimePairEmbedding(nn.Module):
    """emb_t(t) + emb_r(r) * (t - r): the conditioning vector for F(x, t, r)."""

    def __init__(self, dim: int, freq_dim: int = 64):
        super().__init__()
        self.emb_t = TimeEmbedding(dim, freq_dim)
        self.emb_r = TimeEmbedding(dim, freq_dim)

    def forward(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        gate = (t - r).float()[:, None]
        return self.emb_t(t) + self.emb_r(r) * gate
