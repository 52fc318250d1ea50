"""Raw training params -> checked sections: `load_sections(raw)` merges the raw mappings into the typed sections of
training/config.py, so an unknown key or a wrong type is a one-line ConfigError naming the key, before any work;
a key without a code default (schema.REQUIRED) that the raw params lack is one line naming it; `check` adds what the
types cannot express: each value against its row's choices and bounds (one pass over the rows of
twinflow_core/schema.py), then the rules across fields (a batch the objective cannot split into quarters, FSDP with
an EMA copy, a UNet grid that cannot be halved) and the registries' names. Validation happens once, at the edge.

The registries a check looks names up in (nets, model families, time signs) import torch, so each check imports
its registry when it runs.
"""

# Lazy imports: torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import copy
import logging

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from twinflow_core import schema
from twinflow_core.bounds import check_numbers
from twinflow_core.errors import ConfigError
from twinflow_core.nets import available_nets
from twinflow_core.training.config import (
    PRETRAINED,
    STAGES,
    LatentSections,
    ModelConfig,
    PretrainedModelConfig,
    StageConfig,
    TrainingSections,
    is_pretrained,
    micro_rows,
    to_dict,
)

_log = logging.getLogger(__name__)  # a deprecated key: one line on stderr (Python's last-resort handler)
SECTION_NAMES = ("model", "objective", "pretrain", "train", "encode")


def one_line(err: BaseException) -> str:
    """An OmegaConf or Hydra error as one line: the key it names, then its message without the type dumps."""
    if err.__cause__ is not None and str(err.__cause__).strip():  # Hydra wraps the OmegaConf error naming the key
        return one_line(err.__cause__)
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
    """Validate the training sections of `raw` (a mapping with model/objective/pretrain/train keys; a key it lacks
    takes its row's default, and one without a code default is an error) and return plain dataclasses. Raises
    ConfigError naming the bad or missing key."""
    picked = _renamed({k: raw[k] for k in SECTION_NAMES if k in raw and raw[k] is not None}, where)
    check_numbers(picked, where)  # NaN passes every `<`/`>` range check below; refuse it first
    # model.name "diffusers" selects the pretrained model's schema; every other name is the UNet's
    typed = OmegaConf.structured(LatentSections if is_pretrained(picked.get("model")) else TrainingSections)
    try:
        merged = OmegaConf.merge(typed, picked)
        sections = OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        owner = (
            "no conf/ file sets it"
            if where.startswith("conf/")
            else "conf/ sets it; run python -m flows.stages.configure"
        )
        raise ConfigError(f"{where}: {err.full_key}: missing ({owner})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: {one_line(err)}") from None
    check(sections, where)
    return sections


def _check_pretrained(m: PretrainedModelConfig, where: str) -> None:
    from twinflow_core.adapters.families import FAMILIES

    if m.family not in FAMILIES:
        raise ConfigError(f"{where}: model.family {m.family!r} not in {tuple(FAMILIES)}")
    if m.finetune == "full" and m.dtype != "float32":
        # Adam's steps at lr 1e-5 are below half a bf16 ulp of most weights: they round away (two steps
        # changed 15% of a block's elements, against all of them in float32). LoRA trains float32 adapters
        # on the frozen low-precision base, so there it is fine.
        raise ConfigError(
            f"{where}: model.dtype {m.dtype} with model.finetune full: the trained weights "
            f"must be float32 (most updates round away in {m.dtype}); keep model.dtype "
            f"float32 with trainer.precision bf16-mixed, or use model.finetune lora"
        )


def _check_unet(m: ModelConfig, where: str) -> None:
    if m.name not in available_nets():
        raise ConfigError(
            f"{where}: model.name: unknown net {m.name!r}; available: {', '.join(available_nets())} "
            f"(or {PRETRAINED!r} for a pretrained diffusers model)"
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


def check(s: TrainingSections, where: str) -> None:
    """Each value against its row's choices and bounds, then the rules across fields and the registries' names."""
    pretrained = isinstance(s.model, PretrainedModelConfig)
    schema.check_section(schema.MODEL_DIFFUSERS if pretrained else schema.MODEL_UNET, "model", to_dict(s.model), where)
    if pretrained:
        _check_pretrained(s.model, where)
    else:
        _check_unet(s.model, where)
    schema.check_section(schema.ENCODE, "encode", to_dict(s.encode), where)
    for name in STAGES:
        st: StageConfig = getattr(s, name)
        schema.check_section(schema.STAGE, "", to_dict(st), where, shown=name)
        schema.check_section(schema.TRAINER, "trainer", to_dict(st.trainer), where, shown=f"{name}.trainer")
        p = f"{where}: {name}"
        tr = st.trainer
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
        if st.lr_warmup >= st.steps:
            raise ConfigError(f"{p}.lr_warmup: {st.lr_warmup} warm-up steps leave none of the {st.steps} steps")
        if st.export_ema_decay > 0 and pretrained:
            raise ConfigError(
                f"{p}.export_ema_decay: the in-house nets only; a pretrained model exports its teacher (set 0)"
            )
        if tr.strategy == "fsdp" and 0.0 < st.ema_decay < 1.0:
            raise ConfigError(f"{p}: the fsdp strategy keeps no EMA copy (as the official FSDP run); set ema_decay: 0")
        if tr.strategy == "fsdp" and st.export_ema_decay > 0:
            # the export average is an unsharded copy updated from the online parameters, which FSDP shards
            raise ConfigError(f"{p}.export_ema_decay: the fsdp strategy keeps no averaged copy; set 0")
        getattr(s.objective, name).build(f"{where}: objective.{name}")
