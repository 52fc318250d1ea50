"""The one declaration table of params.yaml keys (twinflow_core/schema.py, flows/schema.py): every key of params.yaml
and conf/ is declared, every code default equals conf/'s value, a key conf/ owns has no code default, the rows'
choices and bounds refuse a value in one line, and docs/params.md is the table as generated."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import MISSING

from flows import schema
from twinflow_core.errors import ConfigError
from twinflow_core.schema import REQUIRED, Key, check_section

REPO = Path(__file__).resolve().parents[1]


def _variant(model: dict | None) -> str:
    name = (model or {}).get("name")
    return "" if name is None else ("diffusers" if name == "diffusers" else "unet")


def _leaves(tree: dict, prefix: str, variant: str):
    """(dotted key, row or None) of every key under `tree`; a mapping row covers its free keys."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        lookup = re.sub(r"^(pretrain|train)\.trainer\.", "trainer.", path)  # a stage's trainer is trainer.*
        found = schema.lookup(lookup, variant)
        if isinstance(value, dict) and value and not (found is not None and found.type == "mapping"):
            yield from _leaves(value, path + ".", variant)
        else:
            yield path, found


def _undeclared(tree: dict, prefix: str = "") -> list[str]:
    variant = _variant(tree.get("model")) if not prefix else ("" if prefix != "model." else _variant(tree))
    return [path for path, found in _leaves(tree, prefix, variant) if found is None]


def _conf_files():
    """(file, its keys placed where its package puts them) for every conf/**/*.yaml."""
    for file in sorted((REPO / "conf").rglob("*.yaml")):
        text = file.read_text()
        tree = yaml.safe_load(text) or {}
        tree.pop("defaults", None)
        group = file.parent.name
        header = re.search(r"^# @package (\S+)", text, re.M)
        package = header.group(1) if header else ("_global_" if file.parent.name == "conf" else group)
        if package != "_global_":
            for part in reversed(package.split(".")):
                tree = {part: tree}
        yield file, tree


def test_every_params_key_is_declared():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert _undeclared(params) == []


@pytest.mark.parametrize("file, tree", list(_conf_files()), ids=lambda v: getattr(v, "name", ""))
def test_every_conf_key_is_declared(file, tree):
    missing = []
    for section, body in tree.items():
        if section == "model":
            missing += _undeclared(body, "model.")
        elif isinstance(body, dict):
            missing += [p for p, found in _leaves(body, f"{section}.", "") if found is None]
        elif schema.lookup(section) is None:
            missing.append(section)
    assert missing == [], f"{file.relative_to(REPO)}: undeclared {missing}"


def test_an_undeclared_key_is_found():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["stepz"] = 3
    params["gate"]["ratio"]["dpg-shapes/score@1nfe"] = {"of": "base/dpg-shapes/score@euler50-cfg0.5", "min": 0.5}
    assert _undeclared(params) == [
        "train.stepz",
        "gate.ratio.dpg-shapes/score@1nfe.of",
        "gate.ratio.dpg-shapes/score@1nfe.min",
    ]


def test_objective_overrides_are_fields_of_their_preset():
    from twinflow_core.objectives import get

    for file, tree in [(REPO / "params.yaml", yaml.safe_load((REPO / "params.yaml").read_text())), *_conf_files()]:
        for stage, section in ((tree.get("objective") or {}) or {}).items():
            if not isinstance(section, dict) or "preset" not in section:
                continue
            fields = {f.name for f in dataclasses.fields(get(section["preset"]).config_cls)}
            assert set(section.get("overrides") or {}) <= fields, (file, stage)


def _get(tree: dict, path: str):
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def test_every_default_is_conf_s_value():
    """params.yaml is conf/'s default composition (tests/test_train_config.py) plus the sections conf/ leaves to
    it; the diffusers rows against each conf/model file of that kind (a value they disagree on has no default)."""
    from twinflow_core.training.compose import compose

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _, extra = compose([])
    # conf/data/<name>.yaml's source repeats its name: params.yaml leaves it unset (null: data.name)
    composed = {**params, "data": {**params["data"], "path": extra["data"]["path"]}, "trainer": extra["trainer"]}
    wrong = []
    for k in schema.all_keys():
        if k.default is REQUIRED or "*" in k.path or k.variant == "diffusers":
            continue
        value = _get(composed, k.path)
        if value is not KeyError and value != k.default:
            wrong.append((k.path, k.default, value))
    diffusers = [yaml.safe_load(f.read_text()) for f in (REPO / "conf/model").glob("*.yaml")]
    diffusers = [m for m in diffusers if m.get("name") == "diffusers"]
    for k in schema.all_keys():
        if k.variant != "diffusers":
            continue
        leaf = k.path.split(".", 1)[1]
        values = [m[leaf] for m in diffusers if leaf in m]
        if len({repr(v) for v in values}) > 1 or any(isinstance(v, str) and "${" in v for v in values):
            if k.default is not REQUIRED:
                wrong.append((k.path, k.default, "conf/model files disagree: no code default"))
        elif values and values[0] != k.default:
            wrong.append((k.path, k.default, values[0]))
    assert wrong == []


def _dataclass_defaults(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _rows(prefix: str, variant: str = "") -> dict:
    out = {}
    for k in schema.all_keys():
        if k.path.startswith(prefix) and (not variant or k.variant in ("", variant)) and not k.conf_only:
            rest = k.path[len(prefix) :]
            if "." not in rest and "*" not in rest:
                out[rest] = k.default
    return out


def test_the_code_defaults_are_the_table_s():
    """The typed configs' defaults equal the declared ones (a row without a default is not compared)."""
    from flows.register_step import REGISTER_DEFAULTS
    from flows.stages.validate import ValidateConfig
    from twinflow_core.benchmarks.protocol import EvalConfig
    from twinflow_core.data.config import DataConfig, ImageFolderConfig, ShapesConfig

    pipeline_defaults = _pipeline_defaults()
    cases = [
        *_training_cases(),
        ("data.", "", {k: v for k, v in _dataclass_defaults(DataConfig()).items() if k not in ("source",)}),
        ("data.shapes.", "", _dataclass_defaults(ShapesConfig())),
        ("data.imagefolder.", "", _dataclass_defaults(ImageFolderConfig())),
        ("validate.", "", {**_dataclass_defaults(ValidateConfig()), "share_bounds": list(ValidateConfig.share_bounds)}),
        ("evaluate.", "", _dataclass_defaults(EvalConfig())),
        ("register.", "", REGISTER_DEFAULTS),
        ("pipeline.", "", pipeline_defaults),
    ]
    wrong = []
    for prefix, variant, code in cases:
        declared = _rows(prefix, variant)
        for key, value in code.items():
            if dataclasses.is_dataclass(value) or key == "trainer":
                continue  # a nested section: its own case
            if key in declared and declared[key] is not REQUIRED and declared[key] != value:
                wrong.append((prefix + key, declared[key], value))
            elif key not in declared:
                wrong.append((prefix + key, "undeclared", value))
    assert wrong == []


def test_the_training_configs_annotate_each_field_with_its_row_s_type():
    """OmegaConf checks the training sections by their dataclass annotations; the rows check every other section
    and write docs/params.md. Both must name one type, a list's items included (`list[int]` is a "list" row with
    item "int"), or the table documents a type OmegaConf does not enforce."""
    from twinflow_core.training.config import (
        EncodeConfig,
        ModelConfig,
        PretrainedModelConfig,
        StageConfig,
        TrainerConfig,
    )

    python_names = {"int": "int", "float": "float", "bool": "bool", "str": "str", "list": "list", "mapping": "dict"}
    wrong, compared = [], 0
    for prefix, variant, cls in (
        ("model.", "unet", ModelConfig),
        ("model.", "diffusers", PretrainedModelConfig),
        ("trainer.", "", TrainerConfig),
        ("encode.", "", EncodeConfig),
        ("train.", "", StageConfig),
    ):
        for f in dataclasses.fields(cls):
            k = schema.lookup(prefix + f.name, variant)
            if k is None or k.type == "mapping":
                continue
            want = python_names[k.type] + (f"[{python_names[k.item]}]" if k.item else "")
            said = str(f.type).replace(" | None", "").replace("typing.", "")
            if said.split("[")[0] not in python_names.values():
                continue  # a nested section (trainer) or an objective: their own rows
            compared += 1
            if said != want and not (said == "list" and k.type == "list" and not k.item):
                wrong.append((prefix + f.name, said, want))
    assert compared > 40 and wrong == []


def _training_cases() -> list[tuple[str, str, dict]]:
    """(row prefix, model variant, {field: code default}) of the training sections' typed configs."""
    from twinflow_core.training.config import (
        EncodeConfig,
        ModelConfig,
        PretrainedModelConfig,
        StageConfig,
        TrainerConfig,
        TrainingSections,
    )

    sections = TrainingSections()
    return [
        ("model.", "unet", _dataclass_defaults(ModelConfig())),
        ("model.", "diffusers", _dataclass_defaults(PretrainedModelConfig())),
        ("trainer.", "", _dataclass_defaults(TrainerConfig())),
        ("encode.", "", _dataclass_defaults(EncodeConfig())),
        ("pretrain.", "", _dataclass_defaults(StageConfig())),
        ("train.", "", _dataclass_defaults(StageConfig())),
        ("pretrain.", "", _dataclass_defaults(sections.pretrain)),
        ("train.", "", _dataclass_defaults(sections.train)),
        ("objective.*.", "", _dataclass_defaults(sections.objective.pretrain)),
        ("objective.*.", "", _dataclass_defaults(sections.objective.train)),
    ]


def test_a_key_conf_owns_has_no_code_default():
    """A REQUIRED row's value lives in conf/ only: its typed field is OmegaConf's missing value, never a copy of
    conf/'s recipe (train.steps is written once, in conf/config.yaml), and the two stages' code is the same."""
    from twinflow_core.training.compose import DataChoice
    from twinflow_core.training.config import StageConfig

    wrong = []
    for prefix, variant, code in _training_cases():
        for key, value in code.items():
            declared = _rows(prefix, variant).get(key)
            if declared is REQUIRED and value != MISSING:
                wrong.append((prefix + key, value))
    wrong += [("data." + k, v) for k, v in _dataclass_defaults(DataChoice()).items() if v != MISSING]
    assert wrong == []
    assert {k for k, v in _dataclass_defaults(StageConfig()).items() if v == MISSING} == {
        k.path.split(".", 1)[1] for k in schema.all_keys() if k.path.startswith("train.") and k.default is REQUIRED
    }


def test_params_without_a_key_conf_owns_is_one_line_naming_it():
    from twinflow_core.training.config_checks import load_sections

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["train"]["steps"]
    with pytest.raises(ConfigError) as err:
        load_sections(params, "params.yaml")
    assert str(err.value) == ("params.yaml: train.steps: missing (conf/ sets it; run python -m flows.stages.configure)")


def test_choices_and_bounds_are_the_rows_own():
    """One pass over the rows checks every choice and bound; a registry the rows repeat says the same names."""
    from twinflow_core.nets.embeddings import TIME_SIGNS
    from twinflow_core.schema import STAGE, TRAINER

    assert schema.lookup("model.time_sign", "unet").choices == TIME_SIGNS
    cases = [
        (STAGE, "", {"cond_drop": 1.5}, "train", "p.yaml: train.cond_drop: expected [0, 1), got 1.5"),
        (STAGE, "", {"betas": [0.9, 1.0]}, "train", "p.yaml: train.betas: expected 2 values in [0, 1), got [0.9, 1.0]"),
        (STAGE, "", {"lr": 0.0}, "train", "p.yaml: train.lr: expected > 0, got 0.0"),
        (TRAINER, "trainer", {"strategy": "x"}, "", "p.yaml: trainer.strategy: expected one of auto | ddp | ddp_spawn"),
    ]
    for rows, prefix, values, shown, says in cases:
        with pytest.raises(ConfigError) as err:
            check_section(rows, prefix, values, "p.yaml", shown)
        assert str(err.value).startswith(says)
    check_section(STAGE, "", {"cond_drop": 0.0, "betas": [0.0, 0.5], "init": None, "steps": 1}, "p.yaml", "train")


def _pipeline_defaults() -> dict:
    import ast

    text = (REPO / "flows" / "pipeline.py").read_text()  # not imported: it pulls in prefect
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PIPELINE_DEFAULTS" for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return schema.defaults("pipeline")  # taken from the table
    raise AssertionError("flows/pipeline.py: no PIPELINE_DEFAULTS")


def test_the_reference_table_is_up_to_date():
    assert (REPO / "docs" / "params.md").read_text() == schema.render(), "run: python -m flows.schema"


def test_a_row_knows_its_range():
    steps = schema.lookup("train.steps")
    assert isinstance(steps, Key) and steps.in_range(1) and not steps.in_range(0)
    assert schema.lookup("train.cond_drop").range_text() == "[0, 1)"


def _load_in_a_process(tmp_path, params: dict):
    import subprocess
    import sys

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    code = (
        "import json, sys, yaml; from twinflow_core.training.config_checks import load_sections; "
        f"s = load_sections(yaml.safe_load(open({str(path)!r})), where={str(path)!r}); "
        "print(json.dumps([s.pretrain.r_embed_init, s.train.r_embed_init]))"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_r_embedding_s_old_names_load_with_one_line_each(tmp_path):
    """One name for how the r embedding starts: <stage>.r_embed_init keep | normal | copy. A params.yaml written
    with the old names (a stage's copy_t, a diffusers model's model.r_init) still loads, saying so in one line."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["r_embed_init"] = "copy_t"
    proc = _load_in_a_process(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '["keep", "copy"]'
    assert proc.stderr.strip() == f"{tmp_path / 'params.yaml'}: train.r_embed_init copy_t is deprecated; write copy"

    model = yaml.safe_load((REPO / "conf/model/sd3.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"] = {**model, "image_size": 32, "r_init": "normal"}
    proc = _load_in_a_process(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '["normal", "normal"]'
    assert (
        proc.stderr.count("\n") == 1 and "model.r_init is deprecated; write train.r_embed_init: normal" in proc.stderr
    )


def test_the_old_and_new_r_embedding_names_must_agree():
    from twinflow_core.errors import ConfigError
    from twinflow_core.training.config_checks import load_sections

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"] = {**yaml.safe_load((REPO / "conf/model/sd3.yaml").read_text()), "image_size": 32}
    params["model"]["r_init"] = "copy"
    params["train"]["r_embed_init"] = "normal"
    with pytest.raises(
        ConfigError, match=r"model.r_init 'copy' \(deprecated\) and pretrain.r_embed_init|train.r_embed_init"
    ):
        load_sections(params, "p.yaml")
    params["model"]["r_init"] = ""  # the old default: nothing to say
    assert load_sections(params, "p.yaml").train.r_embed_init == "normal"
