"""One training phase end to end: validated sections in, a generator checkpoint out (resuming when it can).

Used by both stage entry points (flows/stages/pretrain.py, train.py) and by the bench and tests. Resumable
state lives in <resume_dir>/<stage>-<key>/, where key hashes everything that changes the weights (the stage's
tracked config, the objective, the model, the dataset's meta.json, the init checkpoint's weights): a rerun of
the same configuration resumes from the newest state there; any change starts afresh.

Lightning, and the modules built on it (callbacks, data modules, the Lightning module, latent training, FSDP), are
imported in `fit`: `run_key` and `RUN_KEYS` are read without them, and Lightning takes seconds to import.
"""

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
from twinflow_core.data.prepared import read_meta as read_data_meta
from twinflow_core.errors import CheckpointError, ConfigError, DataError
from twinflow_core.loader import load_generator
from twinflow_core.nets import build_net
from twinflow_core.nets.embeddings import reinit_target_time_embedding
from twinflow_core.nets.generator import read_meta
from twinflow_core.text import Tokenizer
from twinflow_core.training.config import STAGES, StageConfig, TrainingSections, is_pretrained, micro_batch, to_dict
from twinflow_core.training.launch import detect, micro_batch_for, placement

N_GRID = 16
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


def _latent_meta(path: str) -> dict:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        raise DataError(f"{path}: no latent shards (no meta.json); the encode stage writes them (encode.out)")
    return json.loads(meta.read_text())


def _tokenizer_for(meta: dict) -> Tokenizer:
    words = meta.get("vocabulary")
    if not words:
        raise DataError(f"prepared dataset {meta.get('name')!r}: meta.json has no vocabulary")
    # room beyond the longest training caption for evaluation prompts, rounded up to a multiple of 8
    max_len = max(32, -(-(int(meta.get("max_words", 0)) + 8) // 8) * 8)
    return Tokenizer(words, max_len=max_len)


def grid_captions(captions: list[str], n: int = N_GRID) -> list[str]:
    """n distinct captions spread over the dataset (a fixed, readable set for sample grids)."""
    seen, picked = set(), []
    stride = max(1, len(captions) // (4 * n))
    for c in captions[::stride]:
        if c not in seen:
            seen.add(c)
            picked.append(c)
        if len(picked) == n:
            break
    return picked


def _optimisation(st: StageConfig, accumulate: int) -> dict:
    """The Lightning module's keywords that the stage config sets alike for in-house and latent models."""
    return dict(
        lr=st.lr,
        betas=st.betas,
        weight_decay=st.weight_decay,
        ema_decay=st.ema_decay,
        grad_clip=st.grad_clip,
        seed=st.seed,
        accumulate=accumulate,
        steps=st.steps,
        lr_schedule=st.lr_schedule,
        lr_warmup=st.lr_warmup,
    )


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

    `launch` (launch.detect(); detected here when None) decides devices and num_nodes under torchrun or SLURM."""
    import lightning as L

    from twinflow_core.training.callbacks import (
        ExportGenerator,
        PeriodicState,
        ProgressLines,
        SampleGrid,
        check_run_key,
        check_state,
        latest_state,
        resume_point,
    )
    from twinflow_core.training.data import PreparedDataModule
    from twinflow_core.training.module import NonFiniteStep, TwinFlowModule

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {STAGES}")
    st: StageConfig = getattr(sections, stage)
    if st.threads > 0:
        torch.set_num_threads(st.threads)
    objective = getattr(sections.objective, stage).build(f"objective.{stage}")
    latent = is_pretrained(sections.model)  # a pretrained diffusers model, in its latent space (adapters/training.py)
    data_meta = read_data_meta(st.data) if not latent else _latent_meta(st.data)

    if latent:
        from twinflow_core.training.latent import build_net as build_latent_net
        from twinflow_core.training.latent import check_latents

        if stage != "train" or not st.init:
            raise ConfigError(
                f"{stage}: a pretrained model (model.name diffusers) is fine-tuned by the train stage "
                f"from train.init, its pipeline folder; there is no pretrain stage for it"
            )
        check_latents(data_meta, st.data, sections.model)
        parts = build_latent_net(st.init, sections.model, st.seed, st.ema_decay, st.r_embed_init)
        net = parts.net
    elif st.init:
        read_meta(st.init)  # a clear error when the base checkpoint is missing
        base = load_generator(st.init)
        net, tokenizer = base.net.train().requires_grad_(True), base.tokenizer
        net_name, net_kwargs = base.meta["net"], base.meta["net_kwargs"]
        if st.r_embed_init != "keep":
            torch.manual_seed(st.seed)
            reinit_target_time_embedding(net, st.r_embed_init)
        missing = sorted(set(data_meta.get("vocabulary", [])) - set(tokenizer.vocabulary))
        if missing:
            raise DataError(f"{st.data}: caption words {missing[:5]} are unknown to the init checkpoint {st.init}")
    else:
        tokenizer = _tokenizer_for(data_meta)
        net_name = sections.model.name
        net_kwargs = {**sections.model.net_kwargs(), "vocab_size": tokenizer.size, "max_len": tokenizer.max_len}
        torch.manual_seed(st.seed)
        net = build_net(net_name, **net_kwargs)

    if launch is None:
        launch = detect(st.trainer.devices, st.trainer.num_nodes)
    trainer_cfg = placement(st.trainer, launch)
    world = trainer_cfg.devices * trainer_cfg.num_nodes
    micro = micro_batch_for(st.batch_size, st.micro_batch, world, stage) if launch.external else micro_batch(st)
    accumulate = st.batch_size // (micro * world)
    strategy = trainer_cfg.strategy
    if latent:
        from twinflow_core.training.data import LatentDataModule

        datamodule = LatentDataModule(st.data, st.steps, st.batch_size, micro, st.seed, st.cond_drop)
        module_cls = TwinFlowModule
        if strategy == "fsdp":  # FSDP2 (fully_shard per block) through ModelParallelStrategy, also on CPU
            from twinflow_core.training import fsdp

            module_cls, strategy = fsdp.ShardedTwinFlowModule, fsdp.strategy(trainer_cfg.devices)
        module = module_cls(
            net,
            objective,
            **_optimisation(st, accumulate),
            null_ids=torch.zeros(1, 1, dtype=torch.long),
            teacher=parts.teacher,
        )
    else:
        datamodule = PreparedDataModule(
            st.data,
            tokenizer,
            st.steps,
            st.batch_size,
            micro,
            st.seed,
            st.cond_drop,
            int(net_kwargs.get("image_size", data_meta.get("image_size"))),
        )
        module = TwinFlowModule(
            net,
            objective,
            **_optimisation(st, accumulate),
            null_ids=tokenizer.null(1),
            export_ema_decay=st.export_ema_decay,
        )

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
    if latent:  # no training-time sample grids for latent models (the evaluate stage draws them)
        from twinflow_core.training.latent import ExportLatentGenerator

        extra["data"]["image_size"] = sections.model.image_size
        grid, exporter = None, ExportLatentGenerator(out, parts, sections.model, extra)
    else:
        grid = SampleGrid(
            out,
            grid_captions(datamodule.dataset.captions),
            tokenizer,
            every=st.sample_every,
            euler_steps=25 if getattr(objective, "estimate_order", 1) == 0 else 0,
            seed=st.seed,
            on_grid=on_grid,
            keep=resume_dir / "samples",
        )
        exporter = ExportGenerator(out, net_name, net_kwargs, tokenizer, extra)
    # the grid before the state: a state of step k on disk then means that step k's grid is kept beside it
    all_callbacks = [*([grid] if grid else []), PeriodicState(resume_dir, st.ckpt_every), exporter, *(callbacks or [])]
    show = st.progress if progress is None else progress
    if show and not sys.stderr.isatty():  # no bar in a log: print a line every log_every * 5 steps instead
        show = False
        all_callbacks.append(ProgressLines(stage, st.steps, st.log_every * 5))
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=strategy,
        precision=trainer_cfg.precision,
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
            module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None, weights_only=True
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
        "params": sum(p.numel() for p in net.parameters()),
        "final": module.history[-1] if module.history else {},
        "out": str(out),
        "run_key": key,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "launcher": launch.launcher,
        "is_global_zero": trainer.is_global_zero,
    }
    return summary
