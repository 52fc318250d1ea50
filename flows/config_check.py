"""The whole params.yaml checked at once, before anything runs, by the validators the stages themselves use.

Each section keeps its own schema where the stage that reads it lives (data: twinflow_core/data/config.py,
validate: flows/stages/validate.py, model/objective/pretrain/train: twinflow_core/training/config.py, evaluate:
twinflow_core/benchmarks/evaluate.py EvalConfig, gate: flows/gating.py); this module only calls each of them on the
resolved configuration and adds the rules that span sections. So `twinflow run train.steps=-5` fails in seconds
with the same one-line message the `pretrain` stage would print an hour later, and nothing is written.

The `register` and `pipeline` sections are read by the flow with defaults filled in (flows/overrides.section);
their keys and types are checked here against those defaults.
"""
from __future__ import annotations

from typing import Any

from flows.overrides import with_overrides
from twinflow_core.errors import ConfigError

# The flow's sections: key -> (types, rule or None). flows/pipeline.py PIPELINE_DEFAULTS and flows/registry.py
# REGISTER_DEFAULTS give the defaults; tests/test_config_check.py checks the keys agree.
PIPELINE_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "push": ((bool,), None),
    "dvc_remote": ((str,), None),
    "git_remote": ((str,), None),
    "retries": ((int,), (0, 20)),
    "retry_delay_s": ((int, float), (0.0, 3600.0)),
}
REGISTER_SCHEMA: dict[str, tuple[tuple[type, ...], Any]] = {
    "model_name": ((str,), "nonempty"),
    "experiment": ((str,), "nonempty"),
    "tracking_uri": ((str,), None),
    "checkpoint": ((str,), "nonempty"),
    "metrics": ((str,), "nonempty"),
    "artifacts": ((list,), None),
}


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
        types, rule = schema[key]
        if value is None and str in types:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}: {name}.{key}: expected {names}, got {value!r}")
        if isinstance(rule, tuple) and not rule[0] <= value <= rule[1]:
            raise ConfigError(f"{where}: {name}.{key}: expected {rule[0]}..{rule[1]}, got {value!r}")
        if rule == "nonempty" and not value:
            raise ConfigError(f"{where}: {name}.{key}: must not be empty")


def _cross_section(params: dict, data_cfg, sections, where: str) -> None:
    """Rules between sections that no single stage sees until it runs."""
    prepared = f"data/prepared/{data_cfg.name}"
    for stage in ("pretrain", "train"):
        st = getattr(sections, stage)
        if st.data.rstrip("/") == prepared and sections.model.image_size != data_cfg.image_size:
            raise ConfigError(f"{where}: model.image_size is {sections.model.image_size} but {stage}.data "
                              f"({prepared}) is prepared at data.image_size {data_cfg.image_size}; set both "
                              f"(conf/ keeps them in step: python -m flows.stages.configure)")


def check_params(params: dict, where: str = "params.yaml") -> None:
    """Raise ConfigError (one line, naming the key and the allowed values) if any section of `params` is invalid."""
    from flows.gating import GateConfig
    from flows.stages.evaluate import split_section
    from flows.stages.validate import _config as validate_config
    from twinflow_core.benchmarks.evaluate import EvalConfig
    from twinflow_core.data.config import DataConfig
    from twinflow_core.training.config import load_sections

    if not isinstance(params, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")

    def named(fn, *args):
        try:
            return fn(*args)
        except ConfigError as err:
            text = str(err)
            raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None

    data_cfg = named(DataConfig.from_dict, params.get("data"))
    named(validate_config, params.get("validate"))
    sections = load_sections(params, where=where)
    if "evaluate" in params:
        named(EvalConfig.from_dict, split_section(params.get("evaluate") or {})[1])
    if "gate" in params:
        GateConfig.from_params(params, where=where)
    _check_flat_section(params, "pipeline", PIPELINE_SCHEMA, where)
    _check_flat_section(params, "register", REGISTER_SCHEMA, where)
    _cross_section(params, data_cfg, sections, where)


def check_resolved(params: dict, parsed: dict[str, Any], where: str) -> None:
    """Validate params.yaml with the overrides applied (an override may also mend a bad value in the file)."""
    shown = " ".join(f"{k}={v}" for k, v in parsed.items())
    check_params(with_overrides(params, parsed), f"{where} with {shown}" if parsed else where)
