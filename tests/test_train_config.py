"""Training configuration: schema errors are one line before any work; conf/, params.yaml and dvc.yaml agree."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.support.training import ROOT, stage_env
from twinflow_core.errors import ConfigError
from twinflow_core.training.compose import compose
from twinflow_core.training.config import STAGES, tracked_keys
from twinflow_core.training.config_checks import load_sections


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"pretrain": {"stepz": 3}}, "pretrain.stepz: Key 'stepz' not in 'StageConfig'"),
        ({"train": {"steps": "many"}}, "train.steps: Value 'many' of type 'str' could not be converted to Integer"),
        ({"model": {"channels": 32}}, "model.channels"),
        ({"train": {"trainer": {"devices": "two"}}}, "train.trainer.devices"),
        (
            {"objective": {"train": {"overrides": {"dist_match_cof": "high"}}}},
            "objective.train.overrides.dist_match_cof: expected float",
        ),
        ({"objective": {"train": {"overrides": {"lambda": 1.0}}}}, "unknown key(s) ['lambda']"),
        ({"objective": {"pretrain": {"preset": "gan"}}}, "unknown objective preset 'gan'"),
        ({"train": {"batch_size": 18}}, "must be divisible by 4"),
        ({"train": {"trainer": {"strategy": "fsdp"}}}, "set ema_decay: 0"),
        ({"pretrain": {"trainer": {"strategy": "horovod"}}}, "pretrain.trainer.strategy"),
        ({"model": {"channels": [16, 32], "attn_levels": [2]}}, "model.attn_levels [2] must index model.channels"),
        ({"model": {"image_size": 20, "patch": 2, "channels": [32, 64, 64]}}, "cannot be halved"),
        ({"model": {"time_sign": "abs"}}, "model.time_sign: expected one of signed | learned, got 'abs'"),
        ({"train": {"cond_drop": 1.5}}, "train.cond_drop: expected [0, 1), got 1.5"),
        ({"pretrain": {"trainer": {"precision": "8"}}}, "pretrain.trainer.precision: expected one of 32-true"),
    ],
)
def test_bad_params_are_one_line_errors(raw, message):
    """Each bad value in the committed params.yaml (the keys conf/ owns have no code default to fall back on)."""
    with pytest.raises(ConfigError) as err:
        load_sections(_onto_params(raw), where="params.yaml")
    assert message in str(err.value)
    assert "\n" not in str(err.value) and str(err.value).startswith("params.yaml: ")


def _onto_params(raw: dict, base: dict | None = None) -> dict:
    """params.yaml with the mappings of `raw` merged into it."""
    out = yaml.safe_load((ROOT / "params.yaml").read_text()) if base is None else base
    for key, value in raw.items():
        out[key] = _onto_params(value, dict(out.get(key) or {})) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stepz=1"], "train.stepz: Key 'stepz' not in 'StageConfig'"),
        (["train.steps=abc"], "train.steps: Value 'abc'"),
        (["model=nope"], "Could not find 'model/nope'"),
        (["+foo=1"], "unknown top-level key(s) ['foo']"),
        (["trainer=fsdp"], "set ema_decay: 0"),
    ],
)
def test_bad_hydra_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_presets_compose():
    digits, extra = compose(["experiment=digits_cpu"])
    assert extra["data"]["name"] == "digits" and digits.pretrain.data == "data/prepared/digits"
    assert digits.model.image_size == 16
    fsdp, _ = compose(["experiment=fsdp_gpu"])
    assert fsdp.train.trainer.strategy == "fsdp" and fsdp.train.ema_decay == 0.0
    ddp, _ = compose(["trainer=ddp_cpu"])
    assert ddp.pretrain.trainer.devices == ddp.train.trainer.devices == 2
    rcgm, _ = compose(["objective=rcgm"])
    assert rcgm.objective.train.build("x").probs["adv"] == 0.0
    assert rcgm.objective.pretrain.build("x").estimate_order == 0  # the base stays flow matching


def test_stage_rejects_a_bad_params_file_before_any_work(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"steps": 5, "lr": "fast"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.stages.pretrain", "--params", str(params)],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 10
    assert proc.stderr.strip() == (
        "pretrain: error: " + str(params) + ": pretrain.lr: Value 'fast' of type 'str' could not be converted to Float"
    )
    params.write_text(yaml.safe_dump({"train": {"steps": 5}}))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.stages.train", "--params", str(params), "--set", "train.bogus=1"],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 10 and "train.bogus" in proc.stderr and proc.stderr.count("\n") == 1


def test_params_yaml_is_the_composition_of_conf():
    proc = subprocess.run(
        [sys.executable, "-m", "flows.stages.configure", "--check"],
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    load_sections(yaml.safe_load((ROOT / "params.yaml").read_text()))


def test_configure_rewrites_only_its_sections(tmp_path):
    from flows.stages.configure import main

    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    path.write_text(original)
    assert main(["--params", str(path), "experiment=digits_cpu", "train.steps=7"]) == 0
    text = path.read_text()
    new, old = yaml.safe_load(text), yaml.safe_load(original)
    assert new["train"]["steps"] == 7 and new["data"]["name"] == "digits"
    # digits fine-tunes its own fresh base, and is judged against it, not against the committed shapes base
    assert new["evaluate"]["base"] == new["train"]["init"] == new["pretrain"]["out"] != old["evaluate"]["base"]
    assert new["optional_stages"]["pretrain"] == ["used"]  # so dvc.yaml declares the pretrain stage
    assert new["data"].get("source", "digits") == "digits"  # source defaults to name when absent
    assert new["encode"]["data"] == "data/prepared/digits"  # encode is ours too, and follows data.name
    ours = {"model", "objective", "pretrain", "train", "encode", "data", "evaluate", "optional_stages"}
    for key in set(old) - ours:
        assert new[key] == old[key]
    assert {k: v for k, v in new["evaluate"].items() if k != "base"} == {
        k: v for k, v in old["evaluate"].items() if k != "base"
    }
    assert {k: v for k, v in new["data"].items() if k not in ("name", "source", "image_size")} == {
        k: v for k, v in old["data"].items() if k not in ("name", "source", "image_size")
    }
    # every line outside the changed values is kept, comments included: the section banners and the header
    kept = [ln for ln in original.splitlines() if ln.startswith("#")]
    assert kept and kept == [ln for ln in text.splitlines() if ln.startswith("#")]
    # and composing the defaults again gives the original back, byte for byte
    assert main(["--params", str(path)]) == 0
    assert path.read_text() == original


def test_comments_in_gate_and_on_a_data_line_survive_another_experiment_and_back(tmp_path):
    """configure writes only the keys that change, each where it stands: a comment the user added inside a section
    configure does not own (gate) and one on a line it changes (data.name) are still there after digits_cpu and
    back, and the file then checks clean."""
    from flows.stages.configure import main

    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    note = "  name: shapes            # NOTE-DATA on data.name"
    text, n = re.subn(r"(?m)^  name: shapes +#.*$", note, original, count=1)
    assert n == 1
    text, n = re.subn(r"(?m)^gate:\n", "gate:\n  # NOTE-GATE inside the gate\n", text, count=1)
    assert n == 1
    text = text.replace("  champion_margin: 0.02\n", "  champion_margin: 0.02   # NOTE-MARGIN\n")
    path.write_text(text)
    assert main(["--params", str(path), "experiment=digits_cpu"]) == 0
    moved = path.read_text()
    assert "  name: digits            # NOTE-DATA on data.name\n" in moved
    assert "gate:\n  # NOTE-GATE inside the gate\n" in moved and "  champion_margin: 0.02   # NOTE-MARGIN\n" in moved
    assert main(["--params", str(path), "--check", "experiment=digits_cpu"]) == 0
    assert main(["--params", str(path)]) == 0
    assert path.read_text() == text
    assert main(["--params", str(path), "--check"]) == 0


def test_configure_appends_the_sections_a_params_file_lacks_under_its_header(tmp_path, capsys):
    from flows.stages.configure import HEADER_LINE, SECTIONS, main

    path = tmp_path / "params.yaml"
    path.write_text("# mine\ndata:\n  name: shapes   # kept\n")
    assert main(["--params", str(path), "--check"]) == 1
    assert "differs from conf/" in capsys.readouterr().err
    assert main(["--params", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# mine\ndata:\n  name: shapes   # kept\n\n" + HEADER_LINE + "\nmodel:\n")
    assert list(yaml.safe_load(text)) == ["data", *SECTIONS]
    assert main(["--params", str(path), "--check"]) == 0


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_params_are_exactly_the_keys_that_change_the_checkpoint(stage):
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert sorted(dvc["stages"][stage]["params"]) == tracked_keys(stage)
    assert dvc["stages"][stage]["outs"] == [f"${{{stage}.out}}"]
    assert f"${{{stage}.data}}" in dvc["stages"][stage]["deps"]
