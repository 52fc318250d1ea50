"""The 2-D MLP for the toy benchmark: F(x, t, r) on points of the plane, optionally class-conditional."""

from __future__ import annotations

import torch
from torch import nn

from twinflow_core.nets import register_net
from twinflow_core.nets.embeddings import TimePairEmbedding


@register_net("mlp2d")
class MLP2D(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, time_dim: int = 64, num_classes: int = 0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.dim = dim
        self.time = TimePairEmbedding(time_dim)
        # class index num_classes is the null label (the unconditional branch of CFG)
        self.label = nn.Embedding(num_classes + 1, time_dim) if num_classes else None
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond=None) -> torch.Tensor:
        emb = self.time(t, r)
        if self.label is not None and cond is not None:
            emb = emb + self.label(cond)
        return self.mlp(torch.cat([x, emb], dim=-1))
