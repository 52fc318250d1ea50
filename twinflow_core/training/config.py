"""The training configuration's schema: typed dataclasses for the `model`, `objective`, `pretrain` and `train`
sections (of params.yaml, and of the Hydra tree in conf/ that composes them).

Validation happens once, at the edge: `load_sections(raw)` merges the raw mappings into these structured
configs, so an unknown key or a wrong type is a one-line ConfigError naming the key, before any work.
Fields marked `untracked` (logging cadence, paths of scratch state) do not change the weights; every other field
does, and dvc.yaml lists exactly those as the stage's params (tests/test_train_config.py checks this), so a
change invalidates the stage that makes the checkpoint and nothing else.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Optional

from twinflow_core.errors import ConfigError

STAGES = ("pretrain", "train")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
LR_SCHEDULES = ("constant", "cosine", "linear")
# lower bounds of a stage's integer fields (0 means "auto" / "never" for micro_batch, sample_every, threads)
STAGE_MINIMUMS = {"trainer.devices": 1, "trainer.num_nodes": 1, "steps": 1, "batch_size": 1, "micro_batch": 0,
                  "lr_warmup": 0, "ckpt_every": 1, "log_every": 1, "sample_every": 0, "threads": 0}


def untracked(default, **kwargs):
    """A field that does not change the trained weights (not a DVC param of the stage)."""
    if callable(default):
        return field(default_factory=default, metadata={"tracked": False}, **kwargs)
    return field(default=default, metadata={"tracked": False}, **kwargs)


@dataclass
class ModelConfig:
    """The image network (`twinflow_core/nets/unet.py`); vocab_size and max_len come from the dataset."""
    name: str = "unet"
    image_size: int = 32
    patch: int = 2
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    res_blocks: int = 1
    attn_levels: list[int] = field(default_factory=lambda: [2])
    text_dim: int = 64
    text_layers: int = 2
    heads: int = 4
    time_dim: int = 128
    out_skip: bool = False   # F = c(|t|) x_t + net: the 1-step generator need not copy the noise (nets/unet.py)
    sigma_data: float = 0.5  # data scale in c(t)
    time_sign: str = "signed"  # "signed" (official) or "learned" (zero-init sign vector; nets/embeddings.py)

    def net_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


FINETUNE_MODES = ("full", "lora")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
PRETRAINED = "diffusers"  # model.name of a pretrained diffusers model


@dataclass
class PretrainedModelConfig:
    """A pretrained diffusers text-to-image model fine-tuned in its latent space (twinflow_core/adapters;
    conf/model/<family>.yaml). Training reads latent shards (the `encode` stage) and starts from train.init, the
    pipeline folder made a base generator (twinflow_core/adapters/pipeline.py wrap_base)."""
    name: str = PRETRAINED
    family: str = "sd3"                  # a row of twinflow_core/adapters/families.py: sd3 | qwen_image | sana
    source: str = ""                     # the pipeline: a local folder (or a hub id, offline with HF_HUB_OFFLINE=1)
    finetune: str = "full"               # full: a second (r) embedding, gated (t - r); lora: peft adapter, t - r/2
    lora_rank: int = 64                  # official SD3.5 / Qwen-Image LoRA: rank 64, alpha 64
    lora_alpha: float = 64.0
    lora_targets: list[str] = field(default_factory=list)  # empty: the family's official targets (adapters/lora.py)
    r_init: str = ""                     # full only: "" the family's official rule | normal | copy
    gradient_checkpointing: bool = False
    dtype: str = "float32"               # the weights as loaded; trainer.precision sets autocast (bf16-mixed on GPU)
    image_size: int = 32                 # pixels; latents are image_size / the VAE's downsampling
    max_sequence_length: int = 77        # prompt tokens for the text encoders (T5 / Qwen / Gemma)

    def check(self, where: str) -> None:
        from twinflow_core.adapters.families import FAMILIES

        if self.family not in FAMILIES:
            raise ConfigError(f"{where}: model.family {self.family!r} not in {tuple(FAMILIES)}")
        if self.finetune not in FINETUNE_MODES:
            raise ConfigError(f"{where}: model.finetune {self.finetune!r} not in {FINETUNE_MODES}")
        if self.dtype not in WEIGHT_DTYPES:
            raise ConfigError(f"{where}: model.dtype {self.dtype!r} not in {WEIGHT_DTYPES}")
        if self.r_init not in ("", "normal", "copy"):
            raise ConfigError(f"{where}: model.r_init {self.r_init!r} is not '', normal or copy")
        if not self.source:
            raise ConfigError(f"{where}: model.source: name the pipeline folder (or hub id)")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or self.image_size < 8 or self.max_sequence_length < 1:
            raise ConfigError(f"{where}: model: need lora_rank >= 1, lora_alpha > 0, image_size >= 8, "
                              f"max_sequence_length >= 1")


@dataclass
class ObjectiveSection:
    """`ObjectiveConfig.preset(preset, **overrides)` of twinflow_core/objective.py."""
    preset: str = "twinflow"
    overrides: dict[str, Any] = field(default_factory=dict)

    def build(self, where: str):
        from twinflow_core.objective import ObjectiveConfig

        defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                    for f in fields(ObjectiveConfig)}
        for key, value in self.overrides.items():
            want = defaults.get(key)
            if key not in defaults:
                continue  # ObjectiveConfig.from_dict names unknown keys with the full list
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if isinstance(want, float) else (
                isinstance(value, (list, tuple)) if isinstance(want, tuple) else isinstance(value, type(want)))
            if isinstance(want, int) and not isinstance(want, bool) and isinstance(value, bool):
                ok = False
            if not ok:
                raise ConfigError(f"{where}.overrides.{key}: expected {type(want).__name__}, got {value!r}")
        try:
            return ObjectiveConfig.preset(self.preset, **dict(self.overrides))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


@dataclass
class TrainerConfig:
    """Lightning Trainer placement: the only part that differs between a laptop and a cluster."""
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"


@dataclass
class StageConfig:
    """One training phase: `pretrain` (flow-matching base) or `train` (TwinFlow fine-tuning of the base)."""
    data: str = "data/prepared/shapes"   # a prepared dataset directory (twinflow_core/data/prepared.py)
    out: str = "checkpoints/base"        # generator export + final training state
    init: Optional[str] = None           # a generator checkpoint dir to start from (train: the base)
    steps: int = 1000
    batch_size: int = 128                # global batch per optimiser step
    micro_batch: int = 0                 # rows per forward; 0 = batch_size / (devices * num_nodes)
    lr: float = 2e-4
    # the learning rate over the run: constant, or from lr down to 0 at the last step by a cosine or a straight
    # line, after lr_warmup steps that rise linearly from 0 (training/module.py lr_factor). The official recipes
    # keep lr constant; a decay is this project's choice for short CPU budgets (bench/results/recipe_study.md)
    lr_schedule: str = "constant"
    lr_warmup: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    ema_decay: float = 0.99
    # > 0: the exported generator is a second, slower average of the online weights (this decay, the EMA's
    # warm-up rule, updated after each optimiser step), while the EMA of ema_decay stays the objective's teacher.
    # 0: export the teacher, as the official code does. The in-house nets only (a 20B copy is not cheap)
    export_ema_decay: float = 0.0
    grad_clip: float = 1.0
    # fraction of captions replaced by the null caption (the CFG branch). Kept in the TwinFlow stage too, a
    # deviation: the official loaders drop none there; here the baked-CFG target reads the unconditional branch
    # of a small base fine-tuned with shared weights, and the drop keeps that branch trained
    cond_drop: float = 0.1
    # train from an init checkpoint: how its target-time (r) embedding starts (nets/embeddings.py
    # reinit_target_time_embedding): keep | normal (official SD3.5/SANA, N(0, 0.02)) | copy_t (Qwen-Image)
    r_embed_init: str = "keep"
    seed: int = 0
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ckpt_every: int = untracked(100)     # resumable training state every N steps (and at the end)
    sample_every: int = untracked(0)     # 1-NFE sample grid every N steps; 0 = only at the end
    log_every: int = untracked(10)
    resume_dir: str = untracked("outputs/resume")  # scratch: periodic states, keyed by the config's hash
    progress: bool = untracked(True)
    threads: int = untracked(0)          # torch CPU threads per process; 0 = torch's default (all cores)


@dataclass
class Objectives:
    """One objective per stage: the base is trained by flow matching, then fine-tuned by TwinFlow."""
    pretrain: ObjectiveSection = field(default_factory=lambda: ObjectiveSection("fm"))
    train: ObjectiveSection = field(default_factory=lambda: ObjectiveSection("twinflow", {"enhanced_ratio": 0.5}))


@dataclass
class EncodeConfig:
    """The `encode` stage (flows/stages/encode.py): a prepared dataset -> latent shards by the frozen VAE and text
    encoders of the pipeline named by model.source (twinflow_core/data/latents.py). Only latent models use it."""
    data: str = "data/prepared/shapes"       # the prepared image-caption dataset
    out: str = "data/prepared/shapes-latents"
    batch: int = 32                          # images per encoder call
    shard_size: int = 1024                   # rows per latent shard


@dataclass
class TrainingSections:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Objectives = field(default_factory=Objectives)
    pretrain: StageConfig = field(default_factory=lambda: StageConfig(out="checkpoints/base"))
    train: StageConfig = field(default_factory=lambda: StageConfig(
        init="checkpoints/base", out="checkpoints/twinflow"))
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
    detail = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type=",
                                                         "Key:", "To append"))]
    message = " ".join(detail[:8]) if detail else type(err).__name__  # Hydra's context line, then the cause
    return f"{key}: {message}" if key else message


def load_sections(raw: dict, where: str = "params.yaml") -> TrainingSections:
    """Validate the training sections of `raw` (a mapping with model/objective/pretrain/train keys; missing ones
    take the defaults) and return plain dataclasses. Raises ConfigError naming the bad key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    picked = {k: raw[k] for k in SECTION_NAMES if k in raw and raw[k] is not None}
    # model.name "diffusers" selects the pretrained model's schema; every other name is the UNet's
    schema = OmegaConf.structured(LatentSections if is_pretrained(picked.get("model")) else TrainingSections)
    try:
        merged = OmegaConf.merge(schema, picked)
        sections = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_one_line(err)}") from None
    check(sections, where)
    return sections


def apply_overrides(sections: TrainingSections, dotlist: list[str], where: str = "command line") -> TrainingSections:
    """Apply `key.sub=value` overrides (e.g. `train.steps=10`) with the same validation."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not dotlist:
        return sections
    bad = [item for item in dotlist if "=" not in item]
    if bad:
        raise ConfigError(f"{where}: override {bad[0]!r} is not key=value")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(sections), OmegaConf.from_dotlist(list(dotlist)))
        out = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {_one_line(err)}") from None
    check(out, where)
    return out


def _check_unet(m: ModelConfig, where: str) -> None:
    if m.image_size % m.patch or not m.channels or min(m.channels) < 1:
        raise ConfigError(f"{where}: model: image_size {m.image_size} must be divisible by patch {m.patch}, "
                          f"channels non-empty and positive")
    if any(not 0 <= lv < len(m.channels) for lv in m.attn_levels):
        raise ConfigError(f"{where}: model.attn_levels {m.attn_levels} must index model.channels (0..{len(m.channels) - 1})")
    if (m.image_size // m.patch) % (2 ** (len(m.channels) - 1)):
        raise ConfigError(f"{where}: model: a {m.image_size // m.patch} px grid cannot be halved "
                          f"{len(m.channels) - 1} times (image_size / patch, channels)")
    if any(c % m.heads for c in m.channels) or m.text_dim % m.heads:
        raise ConfigError(f"{where}: model: channels {m.channels} and text_dim {m.text_dim} must be divisible by "
                          f"heads {m.heads}")
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
        world = tr.devices * tr.num_nodes
        micro = st.micro_batch or st.batch_size // world
        if micro < 1 or st.batch_size % (world * micro):
            raise ConfigError(f"{p}: batch_size {st.batch_size} is not a multiple of devices*num_nodes ({world}) "
                              f"x micro_batch ({micro})")
        if micro % 4:
            raise ConfigError(f"{p}: micro_batch {micro} (rows per forward) must be divisible by 4 "
                              f"(the objective splits each batch into quarters)")
        if not 0.0 <= st.ema_decay <= 1.0:
            raise ConfigError(f"{p}.ema_decay: expected 0..1, got {st.ema_decay}")
        if st.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"{p}.lr_schedule: {st.lr_schedule!r} not in {LR_SCHEDULES}")
        if st.lr_warmup >= st.steps:
            raise ConfigError(f"{p}.lr_warmup: {st.lr_warmup} warm-up steps leave none of the {st.steps} steps")
        if not 0.0 <= st.export_ema_decay < 1.0:
            raise ConfigError(f"{p}.export_ema_decay: expected 0 <= export_ema_decay < 1, got {st.export_ema_decay}")
        if st.export_ema_decay > 0 and isinstance(s.model, PretrainedModelConfig):
            raise ConfigError(f"{p}.export_ema_decay: the in-house nets only; a pretrained model exports its "
                              f"teacher (set 0)")
        if not 0.0 <= st.cond_drop < 1.0:
            raise ConfigError(f"{p}.cond_drop: expected 0 <= cond_drop < 1, got {st.cond_drop}")
        if st.lr <= 0 or st.grad_clip <= 0 or st.weight_decay < 0:
            raise ConfigError(f"{p}: need lr > 0, grad_clip > 0, weight_decay >= 0; got lr {st.lr}, "
                              f"grad_clip {st.grad_clip}, weight_decay {st.weight_decay}")
        if len(st.betas) != 2 or not all(0.0 <= b < 1.0 for b in st.betas):
            raise ConfigError(f"{p}.betas: expected two values in [0, 1), got {st.betas}")
        if st.r_embed_init not in ("keep", "normal", "copy_t"):
            raise ConfigError(f"{p}.r_embed_init: {st.r_embed_init!r} is not keep, normal or copy_t")
        if tr.strategy == "fsdp" and 0.0 < st.ema_decay < 1.0:
            raise ConfigError(f"{p}: the fsdp strategy keeps no EMA copy (as the official FSDP run); "
                              f"set ema_decay: 0")
        if tr.strategy == "fsdp" and st.export_ema_decay > 0:
            # the export average is an unsharded copy updated from the online parameters, which FSDP shards
            raise ConfigError(f"{p}.export_ema_decay: the fsdp strategy keeps no averaged copy; set 0")
        getattr(s.objective, name).build(f"{where}: objective.{name}")


def micro_batch(st: StageConfig) -> int:
    return st.micro_batch or st.batch_size // (st.trainer.devices * st.trainer.num_nodes)


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
