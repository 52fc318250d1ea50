"""One training phase end to end: validated sections in, a generator checkpoint out (resuming when it can).

Used by both stage entry points (flows/stages/pretrain.py, train.py) and by the bench and tests. Resumable
state lives in <resume_dir>/<stage>-<key>/, where key hashes everything that changes the weights (the stage's
tracked config, the objective, the model, the dataset's meta.json, the init checkpoint's weights): a rerun of
the same configuration resumes from the newest state there; any change starts afresh.

fit checks the stage, builds its parts for either kind of model (parts.py: net, data, Lightning module, placement,
export callbacks), names the run by its key, resumes, trains and summarises. Lightning, and the modules built on it
(callbacks, the Lightning module, parts.py), are imported in `fit`: `run_key` and `RUN_KEYS` are read without them,
and Lightning takes seconds to import.
"""

# Lazy imports: lightning
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from twinflow_core.data.batches import mix_seed
from twinflow_core.data.prepared import file_sha256
from twinflow_core.errors import CheckpointError, ConfigError
from twinflow_core.training.config import STAGES, StageConfig, TrainingSections, to_dict

# keys of the fit summary that differ between two runs of the same inputs (kept out of the DVC-tracked output)
RUN_KEYS = ("seconds", "resumed_from", "steps_run", "sec_per_step_median", "mlflow_run_id")


def tracked_config(sections: TrainingSections, stage: str) -> dict:
    st = getattr(sections, stage)
    return {
        "stage": stage,
        stage: {f.name: to_dict(getattr(st, f.name)) for f in fields(StageConfig) if f.metadata.get("tracked", True)},
        "objective": to_dict(getattr(sections.objective, stage)),
        "model": to_dict(sections.model),
    }


def run_key(sections: TrainingSections, stage: str) -> str:
    st = getattr(sections, stage)
    parts = {"config": tracked_config(sections, stage), "data": file_sha256(Path(st.data) / "meta.json")}
    # the trainer placement does not change the result (data.py), so a run may resume on other devices
    parts["config"][stage].pop("trainer", None)
    if st.init:
        parts["init"] = file_sha256(Path(st.init) / "model.safetensors")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def fit(
    stage: str,
    sections: TrainingSections,
    *,
    loggers=None,
    on_grid: list[Callable] | None = None,
    callbacks=None,
    progress: bool | None = None,
    launch=None,
) -> dict:
    """Train `stage` ("pretrain" or "train") as configured; returns a summary (steps, seconds, losses...).

    `launch` (launch.detect(); detected once the net is built when None) decides devices and num_nodes under
    torchrun or SLURM."""
    import lightning as L

    from twinflow_core.training.callbacks import (
        PeriodicState,
        ProgressLines,
        check_run_key,
        check_state,
        latest_state,
        resume_point,
    )
    from twinflow_core.training.module import NonFiniteStep
    from twinflow_core.training.parts import build_parts

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {STAGES}")
    st: StageConfig = getattr(sections, stage)
    if st.threads > 0:
        torch.set_num_threads(st.threads)
    objective = getattr(sections.objective, stage).build(f"objective.{stage}")
    parts = build_parts(stage, sections, objective, launch)
    module, data_meta = parts.module, parts.data_meta

    key = run_key(sections, stage)
    resume_dir = Path(st.resume_dir) / f"{stage}-{key}"
    module.run_key = key
    # the newest of its periodic states and SLURM requeue checkpoints (Lightning writes those into
    # default_root_dir, set to this folder below: never the checkout, where another run would restore them)
    resume_from = resume_point(resume_dir)
    if resume_from is not None:
        check_state(resume_from)  # a corrupt state is a one-line error naming it, before Lightning reads it
        check_run_key(resume_from, key)
    out = Path(st.out)
    extra = {
        "stage": stage,
        "objective": objective.to_dict(),
        "data": {"path": st.data, "name": data_meta.get("name"), "image_size": data_meta.get("image_size")},
        "init": st.init,
        "config": tracked_config(sections, stage),
        "run_key": key,
        "reference_sampler": "euler" if stage == "pretrain" else "few",
    }
    grid, exporter = parts.end_callbacks(out, extra, resume_dir, on_grid)
    # the grid before the state: a state of step k on disk then means that step k's grid is kept beside it
    all_callbacks = [*([grid] if grid else []), PeriodicState(resume_dir, st.ckpt_every), exporter, *(callbacks or [])]
    show = st.progress if progress is None else progress
    if show and not sys.stderr.isatty():  # no bar in a log: print a line every log_every * 5 steps instead
        show = False
        all_callbacks.append(ProgressLines(stage, st.steps, st.log_every * 5))
    trainer = L.Trainer(
        accelerator=parts.trainer.accelerator,
        devices=parts.trainer.devices,
        num_nodes=parts.trainer.num_nodes,
        strategy=parts.strategy,
        precision=parts.trainer.precision,
        max_steps=st.steps,
        max_epochs=-1,
        logger=loggers if loggers else False,
        enable_checkpointing=False,
        callbacks=all_callbacks,
        enable_progress_bar=show,
        enable_model_summary=False,
        use_distributed_sampler=False,
        log_every_n_steps=st.log_every,
        num_sanity_val_steps=0,
        default_root_dir=str(resume_dir),
    )
    # Python's and numpy's global RNGs are saved in every resume state (module.on_save_checkpoint); seeded here, so
    # that two runs of the same inputs write the same state.ckpt (a resume then restores the saved ones)
    random.seed(mix_seed(st.seed, 5, trainer.global_rank))
    np.random.seed(mix_seed(st.seed, 6, trainer.global_rank) % 2**32)
    start = time.perf_counter()
    # weights_only: the states hold tensors and plain containers only (no pickled objects are trusted)
    try:
        trainer.fit(
            module, datamodule=parts.datamodule, ckpt_path=str(resume_from) if resume_from else None, weights_only=True
        )
    except pickle.UnpicklingError as err:  # weights_only refused an object in the state: crafted, or not ours
        if resume_from is None:
            raise
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(
            f"{resume_from}: resume state refused by the safe loader ({first}); delete it (rm "
            f"{resume_from}) to resume from the one before, or the folder {resume_dir} to start "
            f"the stage over"
        ) from None
    except NonFiniteStep as err:
        kept = latest_state(resume_dir)
        source = f"the init {st.init}" if st.init else "the config"
        raise CheckpointError(
            f"{stage}: stopped at step {err.step}: {err.reason}; nothing exported to {out}; the last finite state "
            f"is {kept or '(none: no state was saved before it)'} (check {source}: lr {st.lr}, "
            f"grad_clip {st.grad_clip}, the data)"
        ) from None
    seconds = time.perf_counter() - start
    if not exporter.done:
        # resumed from the final state (e.g. `dvc repro` after DVC removed the outputs): Lightning restored the
        # weights and EMA but ran no loop, so no on_train_end; export what was restored
        for callback in (grid, exporter):
            if callback is not None:
                callback.on_train_end(trainer, module)
    final = latest_state(resume_dir)
    if trainer.is_global_zero and final is not None:
        shutil.copyfile(final, out / "state.ckpt")  # the end state (optimiser, EMA, RNG, step) beside the export
    times = sorted(module.step_seconds)
    # RUN_KEYS vary between runs of the same inputs (wall clock, a resume); the rest does not
    summary = {
        "stage": stage,
        "steps": trainer.global_step,
        "seconds": round(seconds, 2),
        "resumed_from": str(resume_from) if resume_from else None,
        "steps_run": len(times),
        "sec_per_step_median": round(times[len(times) // 2], 4) if times else None,
        "params": sum(p.numel() for p in parts.net.parameters()),
        "final": module.history[-1] if module.history else {},
        "out": str(out),
        "run_key": key,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "launcher": parts.launch.launcher,
        "is_global_zero": trainer.is_global_zero,
    }
    return summary
