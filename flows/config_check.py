"""The whole params.yaml checked at once, before anything runs, by the validators the stages themselves use.

Every key's type, range and default is declared once (twinflow_core/schema.py, flows/schema.py); each section's
typed config takes them from there (data: twinflow_core/data/config.py, validate: flows/schema.py ValidateConfig,
model/objective/pretrain/train: twinflow_core/training/config.py, checked by twinflow_core/training/config_checks.py,
evaluate: twinflow_core/benchmarks/protocol.py EvalConfig, gate: flows/gating.py). This module calls each of them on
the resolved configuration and adds the rules that span sections. So `twinflow run train.steps=-5` fails in seconds
(`check_overrides`) with the same one-line message the `pretrain` stage would print an hour later, and nothing is
written.

The `register` and `pipeline` sections are read by the flow with defaults filled in (flows/params.section); their
keys and types are checked here against their rows in flows/schema.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.dvc_ops import declared_stages, read_lock
from flows.gating import GateConfig, check_settings
from flows.init_arch import check_inits
from flows.init_source import is_remote
from flows.model_source import check_sources, localise_hub
from flows.params import Params, flatten, parse_overrides, refuse_credentials, repo_root, with_overrides
from flows.schema import flat_schema, split_section, validate_config
from twinflow_core.benchmarks.protocol import EvalConfig, settings_for
from twinflow_core.bounds import check_numbers
from twinflow_core.data.config import DataConfig
from twinflow_core.data.imagefolder import Folder
from twinflow_core.errors import CheckpointError, ConfigError
from twinflow_core.loader import is_latent
from twinflow_core.nets.generator import read_meta
from twinflow_core.schema import check_value, is_a
from twinflow_core.training.config_checks import SECTION_NAMES, load_sections

# The flow's sections: key -> (types, row), from their rows in flows/schema.py (which also gives the
# defaults the flow fills in: flows/pipeline.py PIPELINE_DEFAULTS, flows/register_step.py REGISTER_DEFAULTS).
PIPELINE_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = flat_schema("pipeline")
REGISTER_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = flat_schema("register")


def _check_flat_section(params: dict, name: str, schema: dict, where: str) -> None:
    raw = params.get(name)
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ConfigError(f"{where}: {name}: unknown key(s) {unknown}; known: {sorted(schema)}")
    for key, value in raw.items():
        types, row = schema[key]
        if value is None and str in types:
            continue
        if not is_a(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}: {name}.{key}: expected {names}, got {value!r}")
        check_value(row, value, f"{where}: {name}.{key}")


def _cross_section(params: dict, data_cfg, sections, where: str) -> None:
    """Rules between sections that no single stage sees until it runs."""
    prepared = f"data/prepared/{data_cfg.name}"
    for stage in ("pretrain", "train"):
        st = getattr(sections, stage)
        if st.data.rstrip("/") == prepared and sections.model.image_size != data_cfg.image_size:
            raise ConfigError(
                f"{where}: model.image_size is {sections.model.image_size} but {stage}.data "
                f"({prepared}) is prepared at data.image_size {data_cfg.image_size}; set both "
                f"(conf/ keeps them in step: python -m flows.stages.configure)"
            )


def runs_training(root) -> bool:
    """Whether the project's dvc.yaml runs this project's training stages (flows.stages.pretrain / train): their
    sections are then checked up front (a project of other stages, e.g. stand-ins, may carry a `train.init` only)."""

    cmds = [stage.get("cmd") for stage in declared_stages(root).values() if isinstance(stage, dict)]
    text = " ".join(" ".join(c) if isinstance(c, list) else str(c) for c in cmds if c)
    return any(f"flows.stages.{name}" in text for name in ("pretrain", "train"))


def check_params(params: dict, where: str = "params.yaml", training: bool | None = None) -> None:
    """Raise ConfigError (one line, naming the key and the allowed values) if any section of `params` is invalid.
    `training`: check the training sections (default: where params.yaml has them; flows: `runs_training`)."""

    if not isinstance(params, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    # the one place every number of every section passes: a NaN or an infinity slips through any range check
    # written `value < low` (all comparisons with NaN are False), and a huge int overflows torch/numpy later
    check_numbers(params, where)

    def named(fn, *args):
        try:
            return fn(*args)
        except ConfigError as err:
            text = str(err)
            raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None

    data_cfg = named(DataConfig.from_dict, params.get("data"))
    named(validate_config, params.get("validate"))
    # the training sections have no code defaults for what conf/ owns: a project that trains with other stages
    # need not write them
    if training is None:
        training = any(params.get(name) is not None for name in SECTION_NAMES)
    sections = load_sections(params, where=where) if training else None
    eval_cfg = (
        named(EvalConfig.from_dict, split_section(params.get("evaluate") or {})[1]) if "evaluate" in params else None
    )
    if "gate" in params:
        gate = GateConfig.from_params(params, where=where)
        if eval_cfg is not None:
            check_settings(
                gate,
                [s.label for s in settings_for(eval_cfg, base=False)],
                [s.label for s in settings_for(eval_cfg, base=True)],
                eval_cfg.ratio_reference,
                where,
            )
    _check_flat_section(params, "pipeline", PIPELINE_SCHEMA, where)
    _check_flat_section(params, "register", REGISTER_SCHEMA, where)
    if sections is not None:
        _cross_section(params, data_cfg, sections, where)


def check_resolved(params: dict, parsed: dict[str, Any], where: str, training: bool | None = None) -> None:
    """Validate params.yaml with the overrides applied (an override may also mend a bad value in the file)."""
    shown = " ".join(f"{k}={v}" for k, v in parsed.items())
    check_params(with_overrides(params, parsed), f"{where} with {shown}" if parsed else where, training)


def check_local_inputs(params: dict, root) -> None:
    """Local folders the stages read and no earlier stage makes: each must be there before the first stage, with
    the error the stage itself would give (paths relative to the project folder `root`)."""

    root = Path(root)
    data = params.get("data") or {}
    folder = (data.get("imagefolder") or {}).get("path") if data.get("source") == "imagefolder" else None
    if isinstance(folder, str) and folder and "://" not in folder:
        Folder(str(root / folder)).read_metadata()  # a missing folder, or no metadata.jsonl in it
    made = {str((params.get("pretrain") or {}).get("out", "")).rstrip("/")}  # pretrain's output feeds train
    for stage in ("pretrain", "train"):
        init = (params.get(stage) or {}).get("init")
        if not isinstance(init, str) or not init or is_remote(init) or init.rstrip("/") in made:
            continue
        if (params.get("model") or {}).get("name") == "diffusers" or is_latent(root / init):
            if not (root / init).is_dir():
                raise CheckpointError(f"{stage}.init {init}: no such pipeline folder")
            continue
        read_meta(root / init)  # the train stage's own check: no folder / no model.json / not a generator
    check_inits(params, root)  # an init of another architecture than model.*: refused now, not trained silently


def check_model_sources(root, params: dict, where: str, log=print) -> dict[str, Any]:
    """model.source, train.init and evaluate.base of a pretrained diffusers model found before any stage runs
    (flows/model_source.py); returns the overrides that point a hub id at its cached snapshot."""

    return localise_hub(check_sources(Path(root), params, where), params, log)


def check_overrides(
    overrides: list[str] | None, workdir: str | None = None, tracking_uri: str | None = None
) -> tuple[Path, dict, Params]:
    """Fail on a bad override (unknown key, wrong type, out of range, a credential) before anything runs; returns
    (root, parsed, the checkout's params.yaml). `tracking_uri` (`twinflow run --tracking-uri`) is checked for
    credentials with them."""
    root = repo_root(workdir)
    base = Params.read(root / "params.yaml")
    params = base.tree
    parsed = parse_overrides(overrides, params, where=str(root / "params.yaml"))
    refuse_credentials({"--tracking-uri": tracking_uri or ""}, "twinflow run ")
    refuse_credentials(parsed, "override ")
    refuse_credentials(flatten(params), f"{root / 'params.yaml'}: ")
    # every section, ranges and cross-field rules included, by the stages' own validators; nothing written yet
    check_resolved(params, parsed, where=str(root / "params.yaml"), training=runs_training(root))

    read_lock(root)  # a hand-edited dvc.lock is named here, not in DVC's INFO log after the flow started
    # the pipeline folders exist (or are DVC-tracked, or in the Hugging Face cache: then named by their snapshot)
    parsed = {**parsed, **check_model_sources(root, with_overrides(params, parsed), str(root / "params.yaml"))}
    check_local_inputs(with_overrides(params, parsed), root)
    return root, parsed, base
