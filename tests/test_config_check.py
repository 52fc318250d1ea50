"""The up-front check of the whole configuration (flows/config_check.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.config_check import PIPELINE_SCHEMA, REGISTER_SCHEMA, check_params
from flows.params import apply_overrides, with_overrides
from twinflow_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_params_pass_and_the_flow_sections_match_their_defaults():
    from flows import schema
    from flows.register_step import REGISTER_DEFAULTS

    check_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert set(REGISTER_SCHEMA) == set(REGISTER_DEFAULTS) == set(schema.defaults("register"))
    text = (REPO / "flows" / "pipeline.py").read_text()  # not imported: it pulls in prefect
    assert 'PIPELINE_DEFAULTS = schema.defaults("pipeline")' in text
    assert set(PIPELINE_SCHEMA) == set(schema.defaults("pipeline"))


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("train.steps", 0, "train.steps: expected >= 1, got 0"),
        ("pretrain.ema_decay", 1.5, "pretrain.ema_decay: expected [0, 1], got 1.5"),
        ("train.cond_drop", 1.0, "train.cond_drop: expected [0, 1), got 1.0"),
        ("pretrain.betas", [0.9], "pretrain.betas: expected 2 values in [0, 1), got [0.9]"),
        ("train.threads", -1, "train.threads: expected >= 0"),
        ("data.shard_size", 0, "data.shard_size: expected >= 1"),
        ("register.model_name", "", "register.model_name: must not be empty"),
        ("pipeline.push", "yes", "pipeline.push: expected bool"),
        ("validate.max_caption_words", "many", "validate.max_caption_words: expected int"),
        ("validate.min_vocab_coverage", 1.5, "validate.min_vocab_coverage: expected [0, 1], got 1.5"),
        ("validate.share_bounds", [2.0, 0.5], "validate.share_bounds: expected [low <= 1, high >= 1]"),
        ("evaluate.batch", 0, "evaluate.batch: expected >= 1, got 0"),
        ("evaluate.batch", "many", "evaluate.batch: expected int, got 'many'"),
        ("evaluate.geneval_max_prompts", -1, "evaluate.geneval_max_prompts: expected >= 0, got -1"),
        ("evaluate.nfe", [0, 1], "evaluate.nfe: expected integers >= 1, got [0, 1]"),
        ("evaluate.base_nfe", [1.5], "evaluate.base_nfe: expected a list of integers, got [1.5]"),
        ("evaluate.nfe", [True], "evaluate.nfe: expected a list of integers, got [True]"),
        ("evaluate.base_cfg", ["high"], "evaluate.base_cfg: expected a list of numbers, got ['high']"),
        ("register.artifacts", ["dvc.lock", 7], "register.artifacts: expected a list of strings, got ['dvc.lock', 7]"),
        ("evaluate.domain", "faces", "evaluate.domain: expected one of shapes | digits | auto, got 'faces'"),
    ],
)
def test_each_range_names_its_key(key, value, says):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        check_params(with_overrides(params, {key: value}), "params.yaml")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_an_override_may_mend_a_bad_value_in_the_file():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["steps"] = -5
    with pytest.raises(ConfigError):
        check_params(params)
    check_params(with_overrides(params, {"train.steps": 5}))


def test_an_override_under_a_section_the_file_lacks_is_made_in_the_check_and_in_the_file(tmp_path):
    """One dotted setter serves the check (with_overrides) and the write (apply_overrides): a new
    `gate.ratio.<metric>` entry where the file has no `gate.ratio` yet is made, comments kept."""
    path = tmp_path / "params.yaml"
    path.write_text("# the gate\ngate:\n  min: {m@1nfe: 0.5}   # keep me\n  ratio:\n")
    new = {"gate.ratio.m@1nfe.of": "m@base", "gate.ratio.m@1nfe.min": 0.8}
    wanted = {"gate": {"min": {"m@1nfe": 0.5}, "ratio": {"m@1nfe": {"of": "m@base", "min": 0.8}}}}
    assert with_overrides(yaml.safe_load(path.read_text()), new) == wanted
    assert apply_overrides(path, new)
    assert yaml.safe_load(path.read_text()) == wanted
    assert "# keep me" in path.read_text() and path.read_text().startswith("# the gate\n")


def test_the_gate_follows_evaluate_settings_or_the_run_stops_before_any_stage(tmp_path):
    """evaluate.base_steps names the reference every ratio divides by: changed alone, the real CLI refuses the
    run in one line within seconds (before, the gate failed at registration, after the whole run)."""
    import subprocess
    import sys
    import time

    cli = Path(sys.executable).parent / "twinflow"
    for overrides, says in [
        (["evaluate.base_steps=40"], "evaluate.ratio_reference: 'euler50-cfg0.5' is not a reference"),
        (
            ["evaluate.base_steps=0", "evaluate.ratio_reference="],
            "gate.ratio requires 'geneval-shapes/overall@1nfe', but evaluate publishes no ratios",
        ),
        (["evaluate.nfe=[2,4]"], "gate names 'geneval-shapes/overall@1nfe', but evaluate publishes model settings"),
    ]:
        start = time.monotonic()
        proc = subprocess.run([str(cli), "run", *overrides], cwd=REPO, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - start
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 10, proc.stderr
        assert len(lines) == 1 and says in lines[0], proc.stderr
        assert took < 30, took  # seconds, not a run: nothing was prepared or trained


def test_the_gate_check_passes_when_gate_and_evaluate_move_together():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    moved = {
        "evaluate.base_steps": 40,
        "evaluate.ratio_reference": "euler40-cfg0.5",
    }
    check_params(with_overrides(params, moved), "params.yaml")


def test_a_stage_s_set_goes_through_the_run_s_override_parser(tmp_path):
    """`python -m flows.stages.<stage> --set KEY=VALUE` parses as `twinflow run KEY=VALUE` does (type, credential,
    an int for a float), and also takes a key params.yaml leaves unset."""
    import re

    from flows.params import load_with_sets

    path = tmp_path / "params.yaml"
    path.write_text("data:\n  name: shapes\ntrain:\n  steps: 3\n  lr: 0.5\n")
    got = load_with_sets(path, ["data.source=digits", "train.lr=1"])
    assert got == {"data": {"name": "shapes", "source": "digits"}, "train": {"steps": 3, "lr": 1.0}}
    assert isinstance(got["train"]["lr"], float)
    for item, says in [
        ("train.steps=many", "train.steps is int"),
        ("train.steps.x=1", "'steps' is not a section"),
        ("data.imagefolder.path=https://user:hunter2@example.com/x", "holds a password in a URI"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)) as err:
            load_with_sets(path, [item])
        assert "hunter2" not in str(err.value)


def test_a_learning_rate_in_exponent_form_is_a_float():
    """`train.lr=1e-4` (YAML 1.1 reads an exponent without a dot as a string) is the float a user means, for a
    float key only; an infinity is refused as any non-finite number."""
    import re

    from flows.params import parse_overrides

    params = {"train": {"lr": 0.001, "steps": 3}, "data": {"name": "shapes"}}
    assert parse_overrides(["train.lr=1e-4"], params) == {"train.lr": 1e-4}
    assert parse_overrides(["data.name=1e5"], params) == {"data.name": "1e5"}
    with pytest.raises(ConfigError, match=re.escape("train.steps is int")):
        parse_overrides(["train.steps=1e3"], params)
    with pytest.raises(ConfigError, match=re.escape("expected a finite number, got inf")):
        parse_overrides(["train.lr=1e400"], params)


def test_the_training_sections_are_checked_where_dvc_yaml_runs_the_training_stages(tmp_path):
    """A stage's keys have no code default: the project's own dvc.yaml runs flows.stages.train, so a params.yaml
    without train.steps is refused up front; a project of other stages with only a train.init is not held to it."""
    import re

    from flows.config_check import runs_training

    assert runs_training(REPO)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["train"]["steps"]
    with pytest.raises(ConfigError, match=re.escape("train.steps: missing (conf/ sets it")):
        check_params(params, "params.yaml", training=runs_training(REPO))
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python -m support.toy_stages train\n")
    assert not runs_training(tmp_path)
    check_params({"train": {"init": "checkpoints/base"}}, "params.yaml", training=runs_training(tmp_path))
