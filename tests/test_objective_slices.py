"""A step does not depend on how its batch is split: the objective on the whole batch, and on its halves or quarters
(rows=(offset, total): each micro-batch of an accumulation or of a DDP rank), gives the same losses and gradient, up
to float summation order. The data comes channels-last (training/data.py), which randn_like honours: the global
draws are laid out the same way (objective._Slice.randn)."""

from __future__ import annotations

import copy

import pytest
import torch
from support.training import SPLIT_PRESETS, perturbed_tiny_unet

from twinflow_core.ema import EMA
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective


@pytest.mark.parametrize("preset,overrides", SPLIT_PRESETS)
def test_any_split_of_the_batch_gives_the_whole_batchs_step(preset, overrides):
    net = perturbed_tiny_unet()
    obj = TwinFlowObjective(ObjectiveConfig.preset(preset, **overrides))
    x = torch.randn(16, 8, 8, 3).permute(0, 3, 1, 2)  # channels-last, as the prepared data
    ids, uncond = torch.randint(1, 20, (16, 8)), torch.zeros(16, 8, dtype=torch.long)
    results = {}
    for parts in (1, 2, 4):
        n = 16 // parts
        online = copy.deepcopy(net)
        stats: dict[str, float] = {}
        for i in range(parts):
            torch.manual_seed(123)  # seeded per step: every micro-batch draws the whole batch's noise
            ema = EMA(copy.deepcopy(net), 0.98)
            lo = i * n
            loss, s = obj(online, x[lo : lo + n], ids[lo : lo + n], uncond=uncond[lo : lo + n], ema=ema, rows=(lo, 16))
            (loss / parts).backward()
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v / parts
        grad = torch.cat([p.grad.flatten() for p in online.parameters() if p.grad is not None])
        results[parts] = (stats, grad)
    whole, whole_grad = results[1]
    for parts in (2, 4):
        stats, grad = results[parts]
        assert stats.keys() == whole.keys()
        for k in whole:
            assert stats[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-6), (parts, k)
        assert torch.allclose(grad, whole_grad, rtol=1e-4, atol=1e-6), (parts, (grad - whole_grad).abs().max())
