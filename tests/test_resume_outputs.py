"""A resumed run writes the uninterrupted run's output folder, file for file and byte for byte.

`dvc repro` deletes a stage's outputs before it runs the stage, and the resume states live outside them: a run
that resumes after a kill, or that only re-exports from its final state, cannot redraw the sample grids of the
steps it did not run. They are kept beside the states (SampleGrid's `keep`) and put back. Before that, such a run
wrote 6 of the default train stage's 13 files, and `dvc.lock` recorded a different output than the run it
stood for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.training import make_dataset


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _sections(tmp_path: Path, data: Path, out: str, resume: str):
    from twinflow_core.training.compose import compose

    s, _ = compose(
        [
            "experiment=smoke",
            "data.image_size=16",
            f"data.path={data}",
            "pretrain.steps=6",
            "pretrain.ckpt_every=2",
            "pretrain.sample_every=2",
            f"pretrain.out={tmp_path / out}",
            f"pretrain.resume_dir={tmp_path / resume}",
            "pretrain.progress=false",
        ]
    )
    return s


def test_a_rerun_from_the_final_state_and_a_resumed_run_write_the_full_runs_files(tmp_path):
    from twinflow_core.training.run import fit

    data = make_dataset(tmp_path / "data")
    full = fit("pretrain", _sections(tmp_path, data, "full", "r_full"), progress=False)
    assert full["steps"] == 6 and full["resumed_from"] is None
    reference = _files(tmp_path / "full")
    grids = sorted(name for name in reference if name.startswith("samples/"))
    assert [g.split("/")[1][:13] for g in grids[::2]] == ["step-00000002", "step-00000004", "step-00000006"]

    # what `dvc repro` does after the outputs were removed: the final state is there, no step is left to run
    shutil.rmtree(tmp_path / "full")
    again = fit("pretrain", _sections(tmp_path, data, "full", "r_full"), progress=False)
    assert again["resumed_from"] and again["steps_run"] == 0
    redone = _files(tmp_path / "full")
    assert sorted(redone) == sorted(reference)
    assert [name for name in reference if redone[name] != reference[name]] == []

    # a run killed after its step-4 state: its step-6 state and the grids drawn after step 4 never written, the
    # output folder gone; the same configuration resumes from step 4 and writes the full run's files
    kept = next((tmp_path / "r_full").glob("pretrain-*"))
    (kept / "step-00000006.ckpt").unlink()
    for grid in (kept / "samples").glob("step-*.png"):
        if int(grid.name.split("-")[1]) > 4:
            grid.unlink()
    shutil.rmtree(tmp_path / "full")
    resumed = fit("pretrain", _sections(tmp_path, data, "full", "r_full"), progress=False)
    assert resumed["resumed_from"] and resumed["steps_run"] == 2
    after_kill = _files(tmp_path / "full")
    assert sorted(after_kill) == sorted(reference)
    assert [name for name in reference if after_kill[name] != reference[name]] == []
