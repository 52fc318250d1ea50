"""Micro-batches of any size, down to one row: a micro-batch takes its rows of the global batch's buckets
(objective._Slice), so one of 1 or 2 rows may hold rows of only some buckets (e2e / mul / any / adv) and still
trains the whole batch's step. The batch itself must split into the buckets (a multiple of 4), the micro-batch
not. Also the auto micro-batch: two halves on one or two processes (training/config.py micro_rows)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from support.training import (
    SPLIT_PRESETS,
    load_weights,
    make_dataset,
    perturbed_tiny_unet,
    run_stage,
    smoke_params,
)

from twinflow_core.ema import EMA
from twinflow_core.errors import ConfigError
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective
from twinflow_core.training.config import micro_rows
from twinflow_core.training.launch import micro_batch_for


def _step(obj, net, x, ids, uncond, micro):
    """One step's losses (means over the step, as the module logs them) and gradient, in micro-batches."""
    online, parts = copy.deepcopy(net), len(x) // micro
    stats: dict[str, float] = {}
    for i in range(parts):
        torch.manual_seed(123)  # seeded per step: every micro-batch draws the whole batch's noise
        ema = EMA(copy.deepcopy(net), 0.98)
        lo = i * micro
        sl = slice(lo, lo + micro)
        loss, s = obj(online, x[sl], ids[sl], uncond=uncond[sl], ema=ema, rows=(lo, len(x)))
        (loss / parts).backward()
        for k, v in s.items():
            stats[k] = stats.get(k, 0.0) + v / parts
    return stats, torch.cat([p.grad.flatten() for p in online.parameters() if p.grad is not None])


@pytest.mark.parametrize("preset,overrides", SPLIT_PRESETS)
def test_micro_batches_of_one_and_two_rows_give_the_whole_batchs_step(preset, overrides):
    net = perturbed_tiny_unet()
    obj = TwinFlowObjective(ObjectiveConfig.preset(preset, **overrides))
    x = torch.randn(16, 8, 8, 3).permute(0, 3, 1, 2)  # channels-last, as the prepared data
    ids, uncond = torch.randint(1, 20, (16, 8)), torch.zeros(16, 8, dtype=torch.long)
    whole, whole_grad = _step(obj, net, x, ids, uncond, 16)
    assert whole_grad.abs().max() > 0
    for micro in (1, 2):
        stats, grad = _step(obj, net, x, ids, uncond, micro)
        assert stats.keys() == whole.keys()
        for k in whole:
            assert stats[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-6), (micro, k)
        assert torch.allclose(grad, whole_grad, rtol=1e-4, atol=1e-6), (micro, (grad - whole_grad).abs().max())


def test_auto_micro_batch_is_two_halves_on_one_or_two_processes():
    assert micro_rows(64, 0, 1) == micro_rows(64, 0, 2) == 32
    assert micro_rows(64, 0, 4) == 16 and micro_rows(64, 2, 4) == 2
    assert micro_batch_for(16, 1, 2, "train") == 1
    with pytest.raises(ConfigError, match="does not split over the launcher's 3 processes"):
        micro_batch_for(16, 0, 3, "train")


@pytest.mark.slow
def test_pretrain_and_train_run_with_micro_batches_of_one_and_two_rows(tmp_path):
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data, ["objective.pretrain.preset=twinflow", "pretrain.steps=2", "train.steps=2"])
    # pretrain at the default split makes train's init; train (the stage a user fine-tunes with) at micro-batches of
    # 0 (two halves), 1 and 2 rows: pretrain runs the same fit, a second split of it would add a run and no path
    runs = {("pretrain", 0): (), ("train", 0): (), ("train", 1): (), ("train", 2): ()}
    weights = {}
    for stage, micro in runs:
        out = tmp_path / ("base" if (stage, micro) == ("pretrain", 0) else f"{stage}-{micro}")  # train.init: base
        done = run_stage(stage, params, f"{stage}.micro_batch={micro}", f"{stage}.out={out}")
        assert done.returncode == 0, done.stderr[-3000:]
        assert [h["step"] for h in json.loads((out / "train_log.json").read_text())] == [1, 2]
        weights[stage, micro] = load_weights(out)
    # the same steps as the default split (two halves of 8 rows), up to float summation order
    diffs = {
        (stage, micro): max((weights[stage, 0][k] - w[k]).abs().max().item() for k in w)
        for (stage, micro), w in weights.items()
        if micro
    }
    print(f"max |dw| against micro_batch 0: {diffs}")
    assert all(d < 1e-5 for d in diffs.values()), diffs
    # against what the two steps moved (lr 1e-3)
    assert max((weights["train", 0][k] - w).abs().max().item() for k, w in weights["pretrain", 0].items()) > 1e-4
