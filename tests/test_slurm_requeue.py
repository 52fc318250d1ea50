"""A SLURM requeue, simulated: the job's environment as Lightning's SLURMEnvironment reads it, SIGUSR1 in the middle
of training (what `#SBATCH --signal=SIGUSR1@120` sends before the time limit), the job ended, then run again.

Lightning's handler saves `hpc_ckpt_<n>.ckpt` into the trainer's default_root_dir and calls `scontrol requeue`
(a stand-in on PATH here). It once went into the checkout root, where a later run of another configuration
restored it and exported the earlier run's weights as its own. Now it lives in the run's own resume folder
(<resume_dir>/<stage>-<run key>/): the same key resumes from it and ends with the uninterrupted run's weights; a
run of another key never sees it, and a requeue checkpoint of another key put into its folder is refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from pathlib import Path

import lightning as L
import pytest

from tests.support.training import make_dataset
from twinflow_core.errors import CheckpointError

STEPS = 6
SIGNAL_AT = 3


class _JobEnds(Exception):
    """SLURM stopping the job after the requeue signal."""


class _SignalThenEnd(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == SIGNAL_AT:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled right here, in the main thread (Lightning's handler)
            raise _JobEnds()


def _sections(tmp_path: Path, data: Path, out: str, seed: int = 1):
    from twinflow_core.training.compose import compose

    s, _ = compose(
        [
            "experiment=smoke",
            "data.image_size=16",
            f"data.path={data}",
            f"pretrain.steps={STEPS}",
            "pretrain.ckpt_every=1000",
            "pretrain.sample_every=0",
            f"pretrain.seed={seed}",
            f"pretrain.out={tmp_path / out}",
            f"pretrain.resume_dir={tmp_path / 'resume'}",
            "pretrain.progress=false",
        ]
    )
    return s


@pytest.fixture
def slurm_job(tmp_path, monkeypatch):
    """The variables of an sbatch job's srun task (one node, one task) and a `scontrol` that records its call."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scontrol = bindir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "twinflow-train",
        "SLURM_NODELIST": "127.0.0.1",
    }.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")  # where Lightning wrote hpc_ckpt_<n>.ckpt without a default_root_dir
    previous = signal.getsignal(signal.SIGUSR1)
    yield tmp_path / "scontrol.log"
    signal.signal(signal.SIGUSR1, previous)


def test_a_requeued_run_resumes_only_its_own_state(tmp_path, slurm_job):
    from tests.support.training import load_weights
    from twinflow_core.training.run import fit, run_key

    data = make_dataset(tmp_path / "data")
    reference = fit("pretrain", _sections(tmp_path, data, "reference"), progress=False)
    assert reference["launcher"] == "slurm" and reference["steps"] == STEPS

    # the job: SIGUSR1 after step 3, then SLURM ends it
    sections = _sections(tmp_path, data, "requeued")
    key = run_key(sections, "pretrain")
    shutil.rmtree(tmp_path / "resume")  # the reference run's states (same key) must not be what resumes
    with pytest.raises(_JobEnds):
        fit("pretrain", sections, progress=False, callbacks=[_SignalThenEnd()])
    assert "requeue 4242" in slurm_job.read_text()
    own = tmp_path / "resume" / f"pretrain-{key}"
    assert [p.name for p in own.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    assert not list(Path.cwd().glob("hpc_ckpt_*")), "a requeue checkpoint in the checkout"

    # another run key (another seed) with the same resume_dir: starts from scratch, its own steps, its own weights
    other = fit("pretrain", _sections(tmp_path, data, "other", seed=2), progress=False)
    assert other["resumed_from"] is None and other["steps_run"] == STEPS

    # the requeued job runs again: it resumes from its requeue checkpoint and ends where the reference did
    again = fit("pretrain", _sections(tmp_path, data, "requeued"), progress=False)
    assert again["resumed_from"] == str(own / "hpc_ckpt_1.ckpt")
    assert again["steps"] == STEPS and again["steps_run"] == STEPS - SIGNAL_AT
    ref_w, req_w = load_weights(tmp_path / "reference"), load_weights(tmp_path / "requeued")
    assert ref_w.keys() == req_w.keys() and all(ref_w[k].equal(req_w[k]) for k in ref_w)

    # a requeue checkpoint of this key planted in the other key's folder is refused, with a one-line error
    other_key = run_key(_sections(tmp_path, data, "other", seed=2), "pretrain")
    planted = tmp_path / "resume" / f"pretrain-{other_key}"
    shutil.rmtree(planted)
    planted.mkdir()
    shutil.copy(own / "hpc_ckpt_1.ckpt", planted)
    with pytest.raises(CheckpointError, match=f"run key {key}, not of this run \\({other_key}\\): refused"):
        fit("pretrain", _sections(tmp_path, data, "other", seed=2), progress=False)
