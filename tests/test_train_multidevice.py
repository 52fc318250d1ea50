"""DDP equivalence and kill-and-resume, on the real stage entry point with a shrunk config (tiny net, 16 px).

- DDP: 2 CPU processes (gloo) against 1 process, both with the default micro_batch (0: the global batch of 16 in
  two halves of 8; one process accumulates both, each rank computes one), same seed. The objective is TwinFlow
  (several net calls per step, one with grad). Losses, grad norms and weights are bitwise equal: the all-reduce of
  two gradients is the same float sum as the accumulation of the two (training/config.py micro_rows).
- Resume: a run SIGKILLed after its step-2 state (of 8: before the half, where a sampler that counted only the
  steps left made Lightning end the epoch early and begin it again, tests/test_pipeline_sigkill.py) resumes and
  ends bitwise equal to an uninterrupted run: weights, loss history and the end state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.training import (
    ROOT,
    load_weights,
    make_dataset,
    run_stage,
    smoke_params,
    stage_cmd,
    stage_env,
    state_difference,
)

pytestmark = pytest.mark.slow


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _history(out: Path) -> list[dict]:
    return json.loads((out / "train_log.json").read_text())


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data, ["objective.pretrain.preset=twinflow", "pretrain.steps=3"])
    single = run_stage("pretrain", params, f"pretrain.out={tmp_path}/single")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_stage(
        "pretrain",
        params,
        "pretrain.trainer.devices=2",
        "pretrain.trainer.strategy=ddp",
        f"pretrain.out={tmp_path}/ddp",
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads(ddp.stdout.strip().splitlines()[-1])["world_size"] == 2
    h1, h2 = _history(tmp_path / "single"), _history(tmp_path / "ddp")
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [1, 2, 3]
    for a, b in zip(h1, h2):
        for key in ("loss", "loss/adv", "loss/e2e", "loss/rectify", "grad_norm"):
            assert a[key] == b[key], (key, a[key], b[key])
    # the steps did something (not a test that cannot fail)
    assert h1[0]["loss"] != h1[-1]["loss"]
    assert _max_diff(load_weights(tmp_path / "single"), load_weights(tmp_path / "ddp")) == 0.0


def test_sigkilled_run_resumes_to_the_same_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data, ["pretrain.steps=8", "pretrain.ckpt_every=2"])
    full = run_stage("pretrain", params, f"pretrain.out={tmp_path}/full", f"pretrain.resume_dir={tmp_path}/r_full")
    assert full.returncode == 0, full.stderr[-3000:]

    sets = (f"pretrain.out={tmp_path}/killed", f"pretrain.resume_dir={tmp_path}/r_kill")
    proc = subprocess.Popen(
        stage_cmd("pretrain", params, *sets),
        cwd=ROOT,
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    try:
        while not list((tmp_path / "r_kill").glob("*/step-00000002.ckpt")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no step-2 state within 240 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()  # it really died mid-run

    resumed = run_stage("pretrain", params, *sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] and summary["steps"] == 8 and summary["steps_run"] < 8
    assert _max_diff(load_weights(tmp_path / "full"), load_weights(tmp_path / "killed")) == 0.0
    assert [h["loss"] for h in _history(tmp_path / "full")] == [h["loss"] for h in _history(tmp_path / "killed")]
    assert state_difference(tmp_path / "full" / "state.ckpt", tmp_path / "killed" / "state.ckpt") == []

    # a finished run whose outputs were removed (what `dvc repro` does before it reruns a stage) re-exports
    # the same weights from its final state without training again
    weights = load_weights(tmp_path / "killed")
    import shutil

    shutil.rmtree(tmp_path / "killed")
    again = run_stage("pretrain", params, *sets)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps_run"] == 0
    assert _max_diff(weights, load_weights(tmp_path / "killed")) == 0.0
