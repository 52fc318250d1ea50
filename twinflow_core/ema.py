"""EMA teacher with the official warm-up rule and its two limit cases.

decay in (0,1): an EMA copy, updated every step with a decay d that warms up from 0:
                d <- d + (1-d)*(decay-d)/2 after each update (so d runs 0, 0.495, 0.620, ... -> decay).
decay == 0:     no copy; the teacher is the online model (the official Qwen-Image-20B FSDP run, to save memory).
decay == 1:     a frozen copy of the initial model: a fixed teacher for the CFG target only (the RCGM rollout
                then follows the online model, as the official `model_4_rcgm`); the pure-teacher CFG target
                f_u + w (f_c - f_u) is the objective's `image_free` mode, not implied by the frozen teacher.
Updated where the official step updates it: after the grad-carrying forward, before the teacher calls. The
official step runs once per micro-batch (all its configs use grad_accumulation_steps 1); TwinFlowModule updates
once per optimiser step, which is the same thing without accumulation (see training/module.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from twinflow_core.errors import ConfigError


class EMA:
    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"ema decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.current = 0.0  # the warmed-up decay used by the next update
        self.model: nn.Module | None = None
        if self.decay > 0.0:
            self.model = copy.deepcopy(net).requires_grad_(False).eval()

    def teacher(self, online: nn.Module) -> nn.Module:
        return online if self.model is None else self.model

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        if not 0.0 < self.decay < 1.0:
            return
        d = self.current
        for p_ema, p in zip(self.model.parameters(), online.parameters()):
            p_ema.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for b_ema, b in zip(self.model.buffers(), online.buffers()):
            b_ema.copy_(b)
        self.current = d + (1.0 - d) * (self.decay - d) * 0.5

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "current": self.current,
            "model": None if self.model is None else self.model.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.current = float(state["decay"]), float(state["current"])
        if state["model"] is not None:
            self.model.load_state_dict(state["model"])
