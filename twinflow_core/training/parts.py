"""The parts one training phase is made of, for either kind of model: an in-house net (twinflow_core/nets) trained
on a prepared dataset, or a pretrained diffusers model trained in its latent space on latent shards (latent.py).
`build_parts` picks the kind once and builds the net, its data module, the Lightning module, the trainer placement
and the kind's end-of-run callbacks; run.py's fit names the run, resumes and trains them.

Each kind builds in one order: the net (seeded by the stage's seed, or loaded and its time embedding reinitialised
under that seed), then the placement, the data module and the Lightning module; a run's weights depend on the
seeded draws in that order.

The latent kind's modules (latent.py and fsdp.py, which bring in the adapters) are imported only when it is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from twinflow_core.data.prepared import read_meta as read_data_meta
from twinflow_core.errors import ConfigError, DataError
from twinflow_core.loader import load_generator
from twinflow_core.nets import build_net
from twinflow_core.nets.embeddings import reinit_target_time_embedding
from twinflow_core.nets.generator import read_meta
from twinflow_core.text import Tokenizer
from twinflow_core.training import fsdp
from twinflow_core.training.callbacks import ExportGenerator, SampleGrid
from twinflow_core.training.config import StageConfig, TrainerConfig, TrainingSections, is_pretrained, micro_batch
from twinflow_core.training.data import LatentDataModule, PreparedDataModule
from twinflow_core.training.latent import ExportLatentGenerator, check_latents
from twinflow_core.training.latent import build_net as build_latent_net
from twinflow_core.training.launch import Launch, detect, micro_batch_for, placement
from twinflow_core.training.module import TwinFlowModule

N_GRID = 16


@dataclass(frozen=True)
class TrainingParts:
    data_meta: dict  # the prepared dataset's or the latent shards' meta.json
    net: torch.nn.Module
    datamodule: L.LightningDataModule
    module: TwinFlowModule
    launch: Launch
    trainer: TrainerConfig  # the stage's trainer section with the launcher's placement
    strategy: object  # Lightning's strategy: its name, or a strategy object (FSDP)
    # (out, extra, resume_dir, on_grid) -> (sample grid or None, exporter), called by fit once the run has its key,
    # which `extra` (the export's metadata) and resume_dir (where the grids' copies are kept) carry; the key hashes
    # the init's weights, so it comes after the net, whose loading names a missing init clearly
    end_callbacks: Callable[[Path, dict, Path, list[Callable] | None], tuple[L.Callback | None, L.Callback]]


def build_parts(stage: str, sections: TrainingSections, objective, launch: Launch | None) -> TrainingParts:
    """The parts of `stage` ("pretrain" or "train") as `sections` configure them; `launch` None: detected (launch.py)
    once the net is built. `objective` is the stage's built objective config."""
    st: StageConfig = getattr(sections, stage)
    # a pretrained diffusers model, trained in its latent space (latent.py); else an in-house net
    build = _latent_parts if is_pretrained(sections.model) else _inhouse_parts
    return build(stage, sections, st, objective, launch)


def _inhouse_parts(
    stage: str, sections: TrainingSections, st: StageConfig, objective, launch: Launch | None
) -> TrainingParts:
    data_meta = read_data_meta(st.data)
    if st.init:
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

    launch, trainer_cfg, micro, accumulate = _placement(stage, st, launch)
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

    def end_callbacks(out: Path, extra: dict, resume_dir: Path, on_grid: list[Callable] | None):
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
        return grid, ExportGenerator(out, net_name, net_kwargs, tokenizer, extra)

    return TrainingParts(data_meta, net, datamodule, module, launch, trainer_cfg, trainer_cfg.strategy, end_callbacks)


def _latent_parts(
    stage: str, sections: TrainingSections, st: StageConfig, objective, launch: Launch | None
) -> TrainingParts:
    data_meta = _latent_meta(st.data)
    if stage != "train" or not st.init:
        raise ConfigError(
            f"{stage}: a pretrained model (model.name diffusers) is fine-tuned by the train stage "
            f"from train.init, its pipeline folder; there is no pretrain stage for it"
        )
    check_latents(data_meta, st.data, sections.model)
    latent = build_latent_net(st.init, sections.model, st.seed, st.ema_decay, st.r_embed_init)

    launch, trainer_cfg, micro, accumulate = _placement(stage, st, launch)
    datamodule = LatentDataModule(st.data, st.steps, st.batch_size, micro, st.seed, st.cond_drop)
    module_cls, strategy = TwinFlowModule, trainer_cfg.strategy
    if strategy == "fsdp":  # FSDP2 (fully_shard per block) through ModelParallelStrategy, also on CPU
        module_cls, strategy = fsdp.ShardedTwinFlowModule, fsdp.strategy(trainer_cfg.devices)
    module = module_cls(
        latent.net,
        objective,
        **_optimisation(st, accumulate),
        null_ids=torch.zeros(1, 1, dtype=torch.long),
        teacher=latent.teacher,
    )

    def end_callbacks(out: Path, extra: dict, resume_dir: Path, on_grid: list[Callable] | None):
        # no training-time sample grids for latent models (the evaluate stage draws them)
        extra["data"]["image_size"] = sections.model.image_size
        return None, ExportLatentGenerator(out, latent, sections.model, extra)

    return TrainingParts(data_meta, latent.net, datamodule, module, launch, trainer_cfg, strategy, end_callbacks)


def _placement(stage: str, st: StageConfig, launch: Launch | None) -> tuple[Launch, TrainerConfig, int, int]:
    """The launch, the trainer config it places, the rows per forward, and the micro-batches each process
    accumulates per optimiser step."""
    if launch is None:
        launch = detect(st.trainer.devices, st.trainer.num_nodes)
    trainer_cfg = placement(st.trainer, launch)
    world = trainer_cfg.devices * trainer_cfg.num_nodes
    micro = micro_batch_for(st.batch_size, st.micro_batch, world, stage) if launch.external else micro_batch(st)
    return launch, trainer_cfg, micro, st.batch_size // (micro * world)


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
