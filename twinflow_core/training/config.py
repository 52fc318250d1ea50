"""The training configuration's schema: typed dataclasses for the `model`, `objective`, `pretrain`, `train` and
`encode` sections (of params.yaml, and of the Hydra tree in conf/ that composes them), and small pure helpers on
them (rows per forward, plain containers, the tracked keys).

Each field's type, range, default and help are one row of twinflow_core/schema.py. A REQUIRED row's field has no
code default: it is OmegaConf's mandatory missing value ("???"), so its value comes from conf/ (through params.yaml)
and a params.yaml without it is an error naming the key. Rows marked tracked=False
(logging cadence, paths of scratch state) do not change the weights; every other field does, and dvc.yaml lists
exactly those as the stage's params (tests/test_train_config.py checks this), so a change invalidates
the stage that makes the checkpoint and nothing else. Raw mappings become these sections, checked, in
training/config_checks.py (load_sections); training/compose.py composes conf/ into them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING

from twinflow_core import schema
from twinflow_core.errors import ConfigError
from twinflow_core.objectives import get as get_method
from twinflow_core.schema import default_field as _d

STAGES = ("pretrain", "train")
_UNET = schema.section_defaults(schema.MODEL_UNET, "model")
_DIFFUSERS = schema.section_defaults(schema.MODEL_DIFFUSERS, "model")
_TRAINER = schema.section_defaults(schema.TRAINER, "trainer")
_STAGE = schema.section_defaults(schema.STAGE, "")
_ENCODE = schema.section_defaults(schema.ENCODE, "encode")


@dataclass
class ModelConfig:
    """The image network (`twinflow_core/nets/unet.py`); vocab_size and max_len come from the dataset."""

    # defaults, types and ranges: twinflow_core/schema.py MODEL_UNET (nets/unet.py says what each does)
    name: str = _d(_UNET, "name")
    image_size: int = _d(_UNET, "image_size")
    patch: int = _d(_UNET, "patch")
    channels: list[int] = _d(_UNET, "channels")
    res_blocks: int = _d(_UNET, "res_blocks")
    attn_levels: list[int] = _d(_UNET, "attn_levels")
    text_dim: int = _d(_UNET, "text_dim")
    text_layers: int = _d(_UNET, "text_layers")
    heads: int = _d(_UNET, "heads")
    time_dim: int = _d(_UNET, "time_dim")
    out_skip: bool = _d(_UNET, "out_skip")
    sigma_data: float = _d(_UNET, "sigma_data")
    time_sign: str = _d(_UNET, "time_sign")

    def net_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


PRETRAINED = "diffusers"  # model.name of a pretrained diffusers model


@dataclass
class PretrainedModelConfig:
    """A pretrained diffusers text-to-image model fine-tuned in its latent space (twinflow_core/adapters;
    conf/model/<family>.yaml). Training reads latent shards (the `encode` stage) and starts from train.init, the
    pipeline folder made a base generator (twinflow_core/adapters/generator_files.py wrap_base)."""

    # defaults and ranges: twinflow_core/schema.py MODEL_DIFFUSERS. family, source, image_size and
    # max_sequence_length have no code default (conf/model/<family>.yaml gives them)
    name: str = _d(_DIFFUSERS, "name")
    family: str = _d(_DIFFUSERS, "family")
    source: str = _d(_DIFFUSERS, "source")
    finetune: str = _d(_DIFFUSERS, "finetune")
    lora_rank: int = _d(_DIFFUSERS, "lora_rank")
    lora_alpha: float = _d(_DIFFUSERS, "lora_alpha")
    lora_targets: list[str] = _d(_DIFFUSERS, "lora_targets")
    gradient_checkpointing: bool = _d(_DIFFUSERS, "gradient_checkpointing")
    dtype: str = _d(_DIFFUSERS, "dtype")
    image_size: int = _d(_DIFFUSERS, "image_size")
    max_sequence_length: int = _d(_DIFFUSERS, "max_sequence_length")


@dataclass
class ObjectiveSection:
    """A method of the objective registry (twinflow_core/objectives: twinflow, rcgm, fm, meanflow, ...) and
    overrides of its config: `build_config(preset, **overrides)`. Both keys are conf/'s (objective.pretrain in
    conf/config.yaml, objective.train from conf/objective/<preset>.yaml onto conf/config.yaml's base)."""

    preset: str = MISSING
    overrides: dict[str, Any] = MISSING

    def build(self, where: str):
        try:
            method = get_method(self.preset)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        defaults = {
            f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in fields(method.config_cls)
        }
        for key, value in self.overrides.items():
            want = defaults.get(key)
            if key not in defaults:
                continue  # the config's from_dict names unknown keys with the full list
            ok = (
                (isinstance(value, (int, float)) and not isinstance(value, bool))
                if isinstance(want, float)
                else (isinstance(value, (list, tuple)) if isinstance(want, tuple) else isinstance(value, type(want)))
            )
            if isinstance(want, int) and not isinstance(want, bool) and isinstance(value, bool):
                ok = False
            if not ok:
                raise ConfigError(f"{where}.overrides.{key}: expected {type(want).__name__}, got {value!r}")
        try:
            return method.config(**dict(self.overrides))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


@dataclass
class TrainerConfig:
    """Lightning Trainer placement: the only part that differs between a laptop and a cluster."""

    accelerator: str = _d(_TRAINER, "accelerator")
    devices: int = _d(_TRAINER, "devices")
    num_nodes: int = _d(_TRAINER, "num_nodes")
    strategy: str = _d(_TRAINER, "strategy")
    precision: str = _d(_TRAINER, "precision")


@dataclass
class StageConfig:
    """One training phase: `pretrain` (flow-matching base) or `train` (TwinFlow fine-tuning of the base)."""

    # one field per row of twinflow_core/schema.py STAGE (type, range, help); the REQUIRED rows (the recipe: data,
    # out, init, steps, lr_schedule, ema_decay, cond_drop, seed, trainer, ckpt_every, sample_every) have no code
    # default, conf/config.yaml gives each stage its own. The learning rate over the run: constant,
    # or from lr down to 0 at the last step (cosine, linear) after lr_warmup steps rising from 0
    # (training/module.py lr_factor); the official recipes keep it constant, a decay is this project's choice for
    # short CPU budgets. export_ema_decay > 0: the exported generator is a second, slower average of the online
    # weights while the EMA of ema_decay stays the objective's teacher (in-house nets only); 0 exports the teacher,
    # as the official code does. r_embed_init: with an init checkpoint, how its target-time (r) embedding starts
    # (nets/embeddings.py reinit_target_time_embedding). Rows marked untracked do not change the weights.
    data: str = _d(_STAGE, "data")
    out: str = _d(_STAGE, "out")
    init: str | None = _d(_STAGE, "init")
    steps: int = _d(_STAGE, "steps")
    batch_size: int = _d(_STAGE, "batch_size")
    micro_batch: int = _d(_STAGE, "micro_batch")
    lr: float = _d(_STAGE, "lr")
    lr_schedule: str = _d(_STAGE, "lr_schedule")
    lr_warmup: int = _d(_STAGE, "lr_warmup")
    betas: list[float] = _d(_STAGE, "betas")
    weight_decay: float = _d(_STAGE, "weight_decay")
    ema_decay: float = _d(_STAGE, "ema_decay")
    export_ema_decay: float = _d(_STAGE, "export_ema_decay")
    grad_clip: float = _d(_STAGE, "grad_clip")
    cond_drop: float = _d(_STAGE, "cond_drop")
    r_embed_init: str = _d(_STAGE, "r_embed_init")
    seed: int = _d(_STAGE, "seed")
    trainer: TrainerConfig = MISSING
    ckpt_every: int = _d(_STAGE, "ckpt_every", tracked=False)
    sample_every: int = _d(_STAGE, "sample_every", tracked=False)
    log_every: int = _d(_STAGE, "log_every", tracked=False)
    resume_dir: str = _d(_STAGE, "resume_dir", tracked=False)
    progress: bool = _d(_STAGE, "progress", tracked=False)
    threads: int = _d(_STAGE, "threads", tracked=False)


@dataclass
class Objectives:
    """One objective per stage: the base is trained by flow matching, then fine-tuned by TwinFlow."""

    pretrain: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: ObjectiveSection = field(default_factory=ObjectiveSection)


@dataclass
class EncodeConfig:
    """The `encode` stage (flows/stages/encode.py): a prepared dataset -> latent shards by the frozen VAE and text
    encoders of the pipeline named by model.source (twinflow_core/data/latents.py). Only latent models use it."""

    data: str = _d(_ENCODE, "data")
    out: str = _d(_ENCODE, "out")
    batch: int = _d(_ENCODE, "batch")
    shard_size: int = _d(_ENCODE, "shard_size")


@dataclass
class TrainingSections:
    """The two stages share one schema; what sets them apart (the recipe's REQUIRED keys) is what conf/ gives."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Objectives = field(default_factory=Objectives)
    pretrain: StageConfig = field(default_factory=StageConfig)
    train: StageConfig = field(default_factory=StageConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)


@dataclass
class LatentSections(TrainingSections):
    """The sections for a pretrained diffusers model: the same, with the model section of that kind."""

    model: PretrainedModelConfig = field(default_factory=PretrainedModelConfig)


def is_pretrained(model) -> bool:
    return isinstance(model, PretrainedModelConfig) or (isinstance(model, dict) and model.get("name") == PRETRAINED)


def micro_rows(batch_size: int, micro_batch: int, world: int) -> int:
    """Rows per forward on `world` processes: micro_batch, or for 0 (auto) two halves of the batch on one or
    two processes and one slice per process on more.

    A step's batch is cut into equal slices of this many rows, each one forward and backward; a process adds
    its slices' gradients in .grad one after the other and DDP adds the processes' sums. The slices' losses do
    not depend on the cut (objective._Slice: the batch's noise, partition and bucket means), the float sums do:
    one forward of 16 rows and two of 8 differ in the last bits. Auto therefore does not follow the process
    count up to two: one process adds the halves' gradients g0 + g1, two processes compute one each and the
    all-reduce adds them (a sum of two floats is the same in either order, and the mean's 1/2 is exact), so
    one and two processes train bitwise the same weights. Any other cut trains the same step up to float
    summation order (docs/usage.md, "Processes and micro-batches")."""
    return micro_batch or batch_size // max(2, world)


def micro_batch(st: StageConfig) -> int:
    return micro_rows(st.batch_size, st.micro_batch, st.trainer.devices * st.trainer.num_nodes)


def to_dict(obj) -> Any:
    """Plain containers of a config dataclass (for YAML, JSON and MLflow params)."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def tracked_keys(stage: str) -> list[str]:
    """The params (dotted keys) that change the checkpoint a stage makes: what dvc.yaml must list."""
    keys = [f"{stage}.{f.name}" for f in fields(StageConfig) if f.metadata.get("tracked", True)]
    # train takes its architecture from its init checkpoint when it has one; `model` is listed anyway because a
    # change to it already reruns pretrain and so changes the base checkpoint train depends on
    keys += [f"objective.{stage}", "model"]
    return sorted(keys)
