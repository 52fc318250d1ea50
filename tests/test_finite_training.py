"""A non-finite model never passes: training stops at the first non-finite loss or weight (the stage as DVC runs
it: `python -m flows.stages.<stage>`), keeps the last finite state, exports nothing; a NaN generator is refused
by registration. Inputs are built with plain safetensors/torch, not the project's exporter."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.pipeline import make_checkpoint, make_outputs, scores
from support.training import make_dataset, run_stage, smoke_params

pytestmark = pytest.mark.slow  # a stage subprocess each (~30-50 s on a 2-core box)


def error_lines(stderr: str) -> list[str]:
    # Lightning's own start-up notices ("GPU available: ...") are log lines, not the error
    return [ln for ln in stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]


def test_nan_init_stops_the_train_stage_in_one_line(tmp_path):
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data)
    init = make_checkpoint(tmp_path / "init")
    state = load_file(str(init / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(init / "model.safetensors"))
    proc = run_stage("train", params, f"train.init={init}")
    assert proc.returncode == 13, proc.stderr
    assert error_lines(proc.stderr) == [
        f"train: error: {init}/model.safetensors: tensor '{next(iter(state))}' holds NaN or infinite values; "
        f"this generator is unusable (retrain it, or pick another)"
    ]
    assert not (tmp_path / "twinflow").exists()


def test_a_nan_step_stops_training_and_keeps_the_last_finite_state(tmp_path):
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data)
    # lr rises over the warm-up: step 1 is finite, step 2 overflows the net (loss NaN)
    proc = run_stage(
        "pretrain", params, "pretrain.lr=1e30", "pretrain.steps=8", "pretrain.ckpt_every=1", "pretrain.lr_warmup=7"
    )
    assert proc.returncode == 13, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("pretrain: error: pretrain: stopped at step 2: the loss is nan; nothing exported"), (
        lines[0]
    )
    states = sorted((tmp_path / "resume").glob("pretrain-*/step-*.ckpt"))
    assert [s.name for s in states] == ["step-00000001.ckpt"]
    assert str(states[0]) in lines[0]
    kept = torch.load(states[0], map_location="cpu", weights_only=True)
    assert kept["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert all(math.isfinite(row["loss"]) for row in kept["history"])
    assert not (tmp_path / "base" / "model.safetensors").exists()


def test_registration_refuses_a_nan_generator(tmp_path, monkeypatch):
    from flows.register_step import register_outputs
    from twinflow_core.errors import CheckpointError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_outputs(tmp_path / "proj", scores(0.9, 90.0))
    weights = root / "checkpoints" / "twinflow" / "model.safetensors"
    state = load_file(str(weights))
    save_file(
        {k: v.clone().fill_(float("inf")) if v.is_floating_point() else v for k, v in state.items()}, str(weights)
    )
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        register_outputs(root, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", log=lambda line: None)
    assert not (tmp_path / "mlflow.db").exists()  # nothing registered: the store was never opened


def test_a_crafted_resume_state_is_a_checkpoint_error(tmp_path):
    """A whole zip archive (passes the CRC check) whose pickle names an object the safe loader refuses."""
    import datetime

    import yaml

    from twinflow_core.training.config_checks import load_sections
    from twinflow_core.training.run import run_key

    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data)
    key = run_key(load_sections(yaml.safe_load(params.read_text())), "pretrain")
    state = tmp_path / "resume" / f"pretrain-{key}" / "step-00000002.ckpt"
    state.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "when": datetime.date(2020, 1, 1)}, state)
    before = state.read_bytes()
    proc = run_stage("pretrain", params)
    assert proc.returncode == 13, proc.stderr
    assert "Traceback" not in proc.stderr and "UnpicklingError" not in proc.stderr.replace(
        "resume state refused", ""
    ), proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"pretrain: error: {state}: resume state refused by the safe loader"
    ), proc.stderr
    assert state.read_bytes() == before
