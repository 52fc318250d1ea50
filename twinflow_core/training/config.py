"""The training configuration's schema: typed dataclasses for the `model`, `objective`, `pretrain` and `train`
sections (of params.yaml, and of the Hydra tree in conf/ that composes them).

Validation happens once, at the edge: `load_sections(raw)` merges the raw mappings into these structured
configs, so an unknown key or a wrong type is a one-line ConfigError naming the key, before any work.
Each field's type, range, default and help are one row of twinflow_core/schema.py. Rows marked tracked=False
(logging cadence, paths of scratch state) do not change the weights; every other field does, and dvc.yaml lists
exactly those as the stage's params (tests/test_train_config.py checks this), so a change invalidates
the stage that makes the checkpoint and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from twinflow_core import schema
from twinflow_core.bounds import check_numbers
from twinflow_core.errors import ConfigError
from twinflow_core.schema import ACCELERATORS, FINETUNE_MODES, LR_SCHEDULES, PRECISIONS, STRATEGIES, WEIGHT_DTYPES
from twinflow_core.schema import default_field as _d

STAGES = ("pretrain", "train")
_log = logging.getLogger(__name__)  # a deprecated key: one line on stderr (Python's last-resort handler)
# lower bounds of a stage's integer fields (0 means "auto" / "never" for micro_batch, sample_every, threads)
STAGE_MINIMUMS = {
    **{f"trainer.{k.path.split('.')[1]}": int(k.low) for k in schema.TRAINER if k.low is not None},
    **{k.path: int(k.low) for k in schema.STAGE if k.type == "int" and k.low is not None},
}
_UNET = schema.section_defaults(schema.MODEL_UNET, "model")
_DIFFUSERS = schema.section_defaults(schema.MODEL_DIFFUSERS, "model")
_TRAINER = schema.section_defaults(schema.TRAINER, "trainer")
_STAGE = schema.stage_defaults("train")  # StageConfig() is the train stage; pretrain's values replace some
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
    # max_sequence_length have no code default (conf/model/<family>.yaml gives them); the placeholders here
    # fail check() (source) or only fill a typed field
    name: str = _d(_DIFFUSERS, "name")
    family: str = _d(_DIFFUSERS, "family", "sd3")
    source: str = _d(_DIFFUSERS, "source", "")
    finetune: str = _d(_DIFFUSERS, "finetune")
    lora_rank: int = _d(_DIFFUSERS, "lora_rank")
    lora_alpha: float = _d(_DIFFUSERS, "lora_alpha")
    lora_targets: list[str] = _d(_DIFFUSERS, "lora_targets")
    gradient_checkpointing: bool = _d(_DIFFUSERS, "gradient_checkpointing")
    dtype: str = _d(_DIFFUSERS, "dtype")
    image_size: int = _d(_DIFFUSERS, "image_size", 32)
    max_sequence_length: int = _d(_DIFFUSERS, "max_sequence_length", 77)

    def check(self, where: str) -> None:
        from twinflow_core.adapters.families import FAMILIES

        if self.family not in FAMILIES:
            raise ConfigError(f"{where}: model.family {self.family!r} not in {tuple(FAMILIES)}")
        if self.finetune not in FINETUNE_MODES:
            raise ConfigError(f"{where}: model.finetune {self.finetune!r} not in {FINETUNE_MODES}")
        if self.dtype not in WEIGHT_DTYPES:
            raise ConfigError(f"{where}: model.dtype {self.dtype!r} not in {WEIGHT_DTYPES}")
        if self.finetune == "full" and self.dtype != "float32":
            # Adam's steps at lr 1e-5 are below half a bf16 ulp of most weights: they round away (two steps
            # changed 15% of a block's elements, against all of them in float32). LoRA trains float32 adapters
            # on the frozen low-precision base, so there it is fine.
            raise ConfigError(
                f"{where}: model.dtype {self.dtype} with model.finetune full: the trained weights "
                f"must be float32 (most updates round away in {self.dtype}); keep model.dtype "
                f"float32 with trainer.precision bf16-mixed, or use model.finetune lora"
            )
        if not self.source:
            raise ConfigError(f"{where}: model.source: name the pipeline folder (or hub id)")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or self.image_size < 8 or self.max_sequence_length < 1:
            raise ConfigError(
                f"{where}: model: need lora_rank >= 1, lora_alpha > 0, image_size >= 8, max_sequence_length >= 1"
            )


@dataclass
class ObjectiveSection:
    """A method of the objective registry (twinflow_core/objectives: twinflow, rcgm, fm, meanflow, ...) and
    overrides of its config: `build_config(preset, **overrides)`."""

    preset: str = "twinflow"
    overrides: dict[str, Any] = field(default_factory=dict)

    def build(self, where: str):
        from twinflow_core.objectives import get

        try:
            method = get(self.preset)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        defaults = {
            f.name: f.default if f.default_factory is MISSING else f.default_factory()
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

    # one field per row of twinflow_core/schema.py STAGE (type, range, help); the defaults are the train stage's
    # (schema.STAGE_DEFAULTS), `TrainingSections` gives pretrain its own. The learning rate over the run: constant,
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
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ckpt_every: int = _d(_STAGE, "ckpt_every", tracked=False)
    sample_every: int = _d(_STAGE, "sample_every", tracked=False)
    log_every: int = _d(_STAGE, "log_every", tracked=False)
    resume_dir: str = _d(_STAGE, "resume_dir", tracked=False)
    progress: bool = _d(_STAGE, "progress", tracked=False)
    threads: int = _d(_STAGE, "threads", tracked=False)


def _objective(stage: str) -> ObjectiveSection:
    import copy

    return ObjectiveSection(**copy.deepcopy(schema.OBJECTIVE_DEFAULTS[stage]))


@dataclass
class Objectives:
    """One objective per stage: the base is trained by flow matching, then fine-tuned by TwinFlow."""

    pretrain: ObjectiveSection = field(default_factory=lambda: _objective("pretrain"))
    train: ObjectiveSection = field(default_factory=lambda: _objective("train"))


@dataclass
class EncodeConfig:
    """The `encode` stage (flows/stages/encode.py): a prepared dataset -> latent shards by the frozen VAE and text
    encoders of the pipeline named by model.source (twinflow_core/data/latents.py). Only latent models use it."""

    data: str = _d(_ENCODE, "data")
    out: str = _d(_ENCODE, "out")
    batch: int = _d(_ENCODE, "batch")
    shard_size: int = _d(_ENCODE, "shard_size")


def _stage(name: str) -> StageConfig:
    values = schema.stage_defaults(name)
    return StageConfig(**{**values, "trainer": TrainerConfig(**values["trainer"])})


@dataclass
class TrainingSections:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Objectives = field(default_factory=Objectives)
    pretrain: StageConfig = field(default_factory=lambda: _stage("pretrain"))
    train: StageConfig = field(default_factory=lambda: _stage("train"))
    encode: EncodeConfig = field(default_factory=EncodeConfig)


@dataclass
class LatentSections(TrainingSections):
    """The sections for a pretrained diffusers model: the same, with the model section of that kind."""

    model: PretrainedModelConfig = field(default_factory=PretrainedModelConfig)


SECTION_NAMES = ("model", "objective", "pretrain", "train", "encode")


def is_pretrained(model) -> bool:
    return isinstance(model, PretrainedModelConfig) or (isinstance(model, dict) and model.get("name") == PRETRAINED)


def _one_line(err: BaseException) -> str:
    if err.__cause__ is not None and str(err.__cause__).strip():  # Hydra wraps the OmegaConf error naming the key
        return _one_line(err.__cause__)
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
    detail = [
        ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type=", "Key:", "To append"))
    ]
    message = " ".join(detail[:8]) if detail else type(err).__name__  # Hydra's context line, then the cause
    return f"{key}: {message}" if key else message


def _renamed(picked: dict, where: str) -> dict:
    """The sections with the r embedding's old names mapped to <stage>.r_embed_init (keep | normal | copy): a
    stage's copy_t, a diffusers model's model.r_init ("" = keep); each old name found is one line on stderr."""
    import copy

    model = picked.get("model")
    old_model = isinstance(model, dict) and "r_init" in model
    old_stages = [
        s
        for s in STAGES
        if isinstance(picked.get(s), dict) and picked[s].get("r_embed_init") in schema.DEPRECATED_R_EMBED_INITS
    ]
    if not old_model and not old_stages:
        return picked
    picked = copy.deepcopy(picked)
    for s in old_stages:
        value = picked[s]["r_embed_init"]
        new = schema.DEPRECATED_R_EMBED_INITS[value]
        _log.warning("%s: %s.r_embed_init %s is deprecated; write %s", where, s, value, new)
        picked[s]["r_embed_init"] = new
    value = picked["model"].pop("r_init") if old_model else ""
    if value not in ("", None):
        _log.warning("%s: model.r_init is deprecated; write train.r_embed_init: %s", where, value)
        for s in STAGES:
            st = picked.setdefault(s, {})
            if st.get("r_embed_init", "keep") not in ("keep", value):
                raise ConfigError(
                    f"{where}: model.r_init {value!r} (deprecated) and {s}.r_embed_init "
                    f"{st['r_embed_init']!r} disagree; keep {s}.r_embed_init only"
                )
            st["r_embed_init"] = value
    return picked


def load_sections(raw: dict, where: str = "params.yaml") -> TrainingSections:
    """Validate the training sections of `raw` (a mapping with model/objective/pretrain/train keys; missing ones
    take the defaults) and return plain dataclasses. Raises ConfigError naming the bad key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    picked = _renamed({k: raw[k] for k in SECTION_NAMES if k in raw and raw[k] is not None}, where)
    check_numbers(picked, where)  # NaN passes every `<`/`>` range check below; refuse it first
    # model.name "diffusers" selects the pretrained model's schema; every other name is the UNet's
    schema = OmegaConf.structured(LatentSections if is_pretrained(picked.get("model")) else TrainingSections)
    try:
        merged = OmegaConf.merge(schema, picked)
        sections = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_one_line(err)}") from None
    check(sections, where)
    return sections


def _check_unet(m: ModelConfig, where: str) -> None:
    from twinflow_core.nets import available_nets

    if m.name not in available_nets():
        raise ConfigError(
            f"{where}: model.name: unknown net {m.name!r}; available: {', '.join(available_nets())} "
            f"(or {PRETRAINED!r} for a pretrained diffusers model)"
        )
    sizes = {
        "image_size": m.image_size,
        "patch": m.patch,
        "heads": m.heads,
        "text_dim": m.text_dim,
        "time_dim": m.time_dim,
    }
    sizes.update({"res_blocks": m.res_blocks + 1, "text_layers": m.text_layers + 1})  # these two may be 0
    low = next((k for k, v in sizes.items() if v < 1), None)
    if low:
        raise ConfigError(
            f"{where}: model.{low}: expected >= {0 if low in ('res_blocks', 'text_layers') else 1}, "
            f"got {getattr(m, low)}"
        )
    if m.image_size % m.patch or not m.channels or min(m.channels) < 1:
        raise ConfigError(
            f"{where}: model: image_size {m.image_size} must be divisible by patch {m.patch}, "
            f"channels non-empty and positive"
        )
    if any(not 0 <= lv < len(m.channels) for lv in m.attn_levels):
        raise ConfigError(
            f"{where}: model.attn_levels {m.attn_levels} must index model.channels (0..{len(m.channels) - 1})"
        )
    if (m.image_size // m.patch) % (2 ** (len(m.channels) - 1)):
        raise ConfigError(
            f"{where}: model: a {m.image_size // m.patch} px grid cannot be halved "
            f"{len(m.channels) - 1} times (image_size / patch, channels)"
        )
    if any(c % m.heads for c in m.channels) or m.text_dim % m.heads:
        raise ConfigError(
            f"{where}: model: channels {m.channels} and text_dim {m.text_dim} must be divisible by heads {m.heads}"
        )
    from twinflow_core.nets.embeddings import TIME_SIGNS

    if m.time_sign not in TIME_SIGNS:
        raise ConfigError(f"{where}: model.time_sign {m.time_sign!r} not in {TIME_SIGNS}")
    if m.sigma_data <= 0:
        raise ConfigError(f"{where}: model.sigma_data must be > 0, got {m.sigma_data}")


def check(s: TrainingSections, where: str) -> None:
    """Value checks the types cannot express."""
    if isinstance(s.model, PretrainedModelConfig):
        s.model.check(where)
    else:
        _check_unet(s.model, where)
    if s.encode.batch < 1 or s.encode.shard_size < 1:
        raise ConfigError(f"{where}: encode.batch and encode.shard_size must be >= 1")
    for name in STAGES:
        st: StageConfig = getattr(s, name)
        p = f"{where}: {name}"
        tr = st.trainer
        if tr.accelerator not in ACCELERATORS:
            raise ConfigError(f"{p}.trainer.accelerator: {tr.accelerator!r} not in {ACCELERATORS}")
        if tr.strategy not in STRATEGIES:
            raise ConfigError(f"{p}.trainer.strategy: {tr.strategy!r} not in {STRATEGIES}")
        if tr.precision not in PRECISIONS:
            raise ConfigError(f"{p}.trainer.precision: {tr.precision!r} not in {PRECISIONS}")
        for key, low in STAGE_MINIMUMS.items():
            value = attrgetter(key)(st)
            if value < low:
                raise ConfigError(f"{p}.{key}: expected >= {low}, got {value}")
        if st.batch_size % 4:
            raise ConfigError(
                f"{p}: batch_size {st.batch_size} must be divisible by 4 "
                f"(the objective splits each step's batch into quarters)"
            )
        world = tr.devices * tr.num_nodes
        micro = micro_rows(st.batch_size, st.micro_batch, world)
        if micro < 1 or st.batch_size % (world * micro):
            raise ConfigError(
                f"{p}: batch_size {st.batch_size} is not a multiple of devices*num_nodes ({world}) "
                f"x micro_batch ({micro})"
            )
        if not 0.0 <= st.ema_decay <= 1.0:
            raise ConfigError(f"{p}.ema_decay: expected 0..1, got {st.ema_decay}")
        if st.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"{p}.lr_schedule: {st.lr_schedule!r} not in {LR_SCHEDULES}")
        if st.lr_warmup >= st.steps:
            raise ConfigError(f"{p}.lr_warmup: {st.lr_warmup} warm-up steps leave none of the {st.steps} steps")
        if not 0.0 <= st.export_ema_decay < 1.0:
            raise ConfigError(f"{p}.export_ema_decay: expected 0 <= export_ema_decay < 1, got {st.export_ema_decay}")
        if st.export_ema_decay > 0 and isinstance(s.model, PretrainedModelConfig):
            raise ConfigError(
                f"{p}.export_ema_decay: the in-house nets only; a pretrained model exports its teacher (set 0)"
            )
        if not 0.0 <= st.cond_drop < 1.0:
            raise ConfigError(f"{p}.cond_drop: expected 0 <= cond_drop < 1, got {st.cond_drop}")
        if st.lr <= 0 or st.grad_clip <= 0 or st.weight_decay < 0:
            raise ConfigError(
                f"{p}: need lr > 0, grad_clip > 0, weight_decay >= 0; got lr {st.lr}, "
                f"grad_clip {st.grad_clip}, weight_decay {st.weight_decay}"
            )
        if len(st.betas) != 2 or not all(0.0 <= b < 1.0 for b in st.betas):
            raise ConfigError(f"{p}.betas: expected two values in [0, 1), got {st.betas}")
        if st.r_embed_init not in schema.R_EMBED_INITS:
            raise ConfigError(f"{p}.r_embed_init: {st.r_embed_init!r} is not keep, normal or copy")
        if tr.strategy == "fsdp" and 0.0 < st.ema_decay < 1.0:
            raise ConfigError(f"{p}: the fsdp strategy keeps no EMA copy (as the official FSDP run); set ema_decay: 0")
        if tr.strategy == "fsdp" and st.export_ema_decay > 0:
            # the export average is an unsharded copy updated from the online parameters, which FSDP shards
            raise ConfigError(f"{p}.export_ema_decay: the fsdp strategy keeps no averaged copy; set 0")
        getattr(s.objective, name).build(f"{where}: objective.{name}")


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


# ---- the Hydra tree (conf/) composes the sections above; these two keys exist only during composition


@dataclass
class DataChoice:
    """Which prepared dataset training reads; `configure` keeps params.yaml's data.name/image_size in step."""

    name: str = "shapes"
    source: str = "shapes"
    image_size: int = 32
    path: str = "data/prepared/shapes"


@dataclass
class ComposedConfig(TrainingSections):
    # any mapping here: load_sections validates it against the schema its `name` selects (UNet or diffusers)
    model: Any = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataChoice = field(default_factory=DataChoice)
    # keys of params.yaml's stage-owned sections an experiment sets (e.g. a tiny model's gate); `configure` writes
    # them in place; empty: params.yaml's values stay
    evaluate: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)


def conf_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str] | None = None, config_dir: str | Path | None = None) -> tuple[TrainingSections, dict]:
    """Compose conf/ with Hydra overrides; returns (validated sections, {"data": DataChoice as dict}).

    Unknown keys, wrong types and unknown group options are ConfigErrors (one line)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    ConfigStore.instance().store(name="training_schema", node=ComposedConfig)
    directory = Path(config_dir) if config_dir else conf_dir()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory.resolve()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides or []))
        plain = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"conf/ {' '.join(overrides or [])}: {_one_line(err)}") from None
    finally:
        GlobalHydra.instance().clear()
    unknown = sorted(set(plain) - {f.name for f in fields(ComposedConfig)})
    if unknown:
        raise ConfigError(f"conf/ {' '.join(overrides or [])}: unknown top-level key(s) {unknown}")
    extra = {key: plain.pop(key) for key in ("data", "trainer", "evaluate", "gate")}
    return load_sections(plain, where=f"conf/ {' '.join(overrides or [])}".strip()), extra
