"""The learning-rate schedule and the export average (StageConfig.lr_schedule / lr_warmup / export_ema_decay):
golden factors, the lr each step used, the exported weights as the average the docstring states, and a resume
from a mid-run state that ends bitwise where the uninterrupted run ends (the scheduler's and the average's state
travel in the resume state)."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from tests.support.training import load_weights, make_dataset
from twinflow_core.errors import ConfigError
from twinflow_core.training.module import lr_factor


def test_lr_factor_golden_values():
    assert [lr_factor(k, 4, "constant", 0) for k in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert [lr_factor(k, 4, "linear", 0) for k in range(4)] == [1.0, 0.75, 0.5, 0.25]
    cosine = [lr_factor(k, 4, "cosine", 0) for k in range(4)]
    assert cosine == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4)])
    # warm-up: 1/2, 2/2, then the decay over the remaining 4 steps
    assert [lr_factor(k, 6, "linear", 2) for k in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(k, 3, "constant", 2) for k in range(3)] == [0.5, 1.0, 1.0]


def _sections(tmp_path, data, out: str, resume: str, extra=()):
    from twinflow_core.training.compose import compose

    s, _ = compose(
        [
            "experiment=smoke",
            "data.image_size=16",
            f"data.path={data}",
            "pretrain.steps=6",
            "pretrain.ckpt_every=2",
            "pretrain.lr=0.01",
            "pretrain.lr_schedule=cosine",
            "pretrain.lr_warmup=1",
            "pretrain.export_ema_decay=0.9",
            f"pretrain.out={tmp_path / out}",
            f"pretrain.resume_dir={tmp_path / resume}",
            "pretrain.progress=false",
            *extra,
        ]
    )
    return s


def test_scheduled_lr_the_export_average_and_an_exact_resume(tmp_path):
    from twinflow_core.training.run import fit

    data = make_dataset(tmp_path / "data")
    full = fit("pretrain", _sections(tmp_path, data, "full", "r_full"), progress=False)
    assert full["steps"] == 6
    history = json.loads((tmp_path / "full" / "train_log.json").read_text())
    assert [h["lr"] for h in history] == pytest.approx([0.01 * lr_factor(k, 6, "cosine", 1) for k in range(6)])

    # the export is the average, not the teacher: it differs from the EMA copy that the state holds as teacher
    state = torch.load(tmp_path / "full" / "state.ckpt", map_location="cpu", weights_only=False)
    exported = load_weights(tmp_path / "full")
    teacher = {k: v for k, v in state["ema"]["model"].items() if k in exported}
    average = {k: v for k, v in state["export_ema"]["model"].items() if k in exported}
    assert set(average) == set(exported) and all(torch.equal(average[k], exported[k]) for k in exported)
    assert any(not torch.equal(teacher[k], exported[k]) for k in exported)
    assert state["lr_schedulers"][0]["last_epoch"] == 6

    # resume from the step-4 state alone (a run killed after it; the run keeps its last two states): the same
    # weights, history and end state
    kept = tmp_path / "full-state.ckpt"
    shutil.copy(tmp_path / "full" / "state.ckpt", kept)
    shutil.rmtree(tmp_path / "full")
    (next((tmp_path / "r_full").iterdir()) / "step-00000006.ckpt").unlink()
    resumed = fit("pretrain", _sections(tmp_path, data, "full", "r_full"), progress=False)
    assert resumed["resumed_from"] and resumed["steps_run"] == 2
    again = load_weights(tmp_path / "full")
    assert all(torch.equal(again[k], exported[k]) for k in exported)
    assert json.loads((tmp_path / "full" / "train_log.json").read_text()) == history
    assert (tmp_path / "full" / "state.ckpt").read_bytes() == kept.read_bytes()


@pytest.mark.parametrize(
    "override, words",
    [
        ("pretrain.lr_schedule=step", "pretrain.lr_schedule: expected one of constant | cosine | linear, got 'step'"),
        ("pretrain.lr_warmup=6", "pretrain.lr_warmup: 6 warm-up steps leave none of the 6 steps"),
        ("pretrain.lr_warmup=-1", "pretrain.lr_warmup: expected >= 0, got -1"),
        ("pretrain.export_ema_decay=1.0", "pretrain.export_ema_decay: expected [0, 1), got 1.0"),
        (
            "pretrain.trainer.strategy=fsdp pretrain.ema_decay=0 pretrain.export_ema_decay=0.9",
            "pretrain.export_ema_decay: the fsdp strategy keeps no averaged copy; set 0",
        ),
    ],
)
def test_bad_schedule_values_are_named(tmp_path, override, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        _sections(tmp_path, tmp_path / "data", "o", "r", override.split())


def test_a_frozen_teacher_run_exports_its_trained_weights_not_the_frozen_copy(tmp_path):
    """ema_decay 1: the EMA copy is the frozen initial model, the CFG target's teacher only. The export used to be
    that copy, i.e. the run's starting point unchanged however long it trained."""
    from twinflow_core.training.run import fit

    data = make_dataset(tmp_path / "data")
    s = _sections(
        tmp_path,
        data,
        "frozen",
        "r",
        [
            "pretrain.ema_decay=1.0",
            "pretrain.export_ema_decay=0",
            "pretrain.lr_schedule=constant",
            "pretrain.lr_warmup=0",
            "pretrain.steps=2",
        ],
    )
    fit("pretrain", s, progress=False)
    state = torch.load(tmp_path / "frozen" / "state.ckpt", map_location="cpu", weights_only=False)
    exported = load_weights(tmp_path / "frozen")
    online = {k[len("net.") :]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    assert all(torch.equal(online[k], exported[k]) for k in exported)
    frozen = state["ema"]["model"]
    assert any(not torch.equal(frozen[k], exported[k]) for k in exported)
