"""The promotion gate as pure functions: thresholds, missing metrics, champion margin, config errors."""

import re

import pytest

from flows.gating import GateConfig, check_gate, compare_to_champion, ratio_values
from twinflow_core.errors import ConfigError

GATE = GateConfig.from_params(
    {"gate": {"min": {"geneval-shapes/overall@1nfe": 0.5, "dpg-shapes/score@1nfe": 50}, "champion_margin": 0.05}}
)


def test_gate_passes_at_and_above_minimum():
    v = check_gate({"geneval-shapes/overall@1nfe": 0.5, "dpg-shapes/score@1nfe": 77.0}, GATE)
    assert v.passed and v.label == "passed"
    assert v.reasons == ["geneval-shapes/overall@1nfe 0.5 >= 0.5", "dpg-shapes/score@1nfe 77 >= 50"]


def test_gate_fails_below_minimum_and_names_the_metric():
    v = check_gate({"geneval-shapes/overall@1nfe": 0.49, "dpg-shapes/score@1nfe": 77.0}, GATE)
    assert not v.passed
    assert v.reasons[0] == "geneval-shapes/overall@1nfe 0.49 < 0.5"


def test_missing_metric_fails_and_is_not_substituted():
    # the official metric must not stand in for the embedded one (or the reverse)
    v = check_gate({"geneval/overall@1nfe": 0.9, "dpg-shapes/score@1nfe": 77.0}, GATE)
    assert not v.passed
    assert "geneval-shapes/overall@1nfe missing" in v.reasons[0]


def test_champion_margin_is_relative():
    champ = {"geneval-shapes/overall@1nfe": 0.8, "dpg-shapes/score@1nfe": 80.0}
    ok = compare_to_champion({"geneval-shapes/overall@1nfe": 0.761, "dpg-shapes/score@1nfe": 76.0}, champ, GATE)
    assert ok.passed  # 0.761 >= 0.8 - 0.04, 76 >= 80 - 4
    worse = compare_to_champion({"geneval-shapes/overall@1nfe": 0.759, "dpg-shapes/score@1nfe": 90.0}, champ, GATE)
    assert not worse.passed and "champion 0.8" in worse.reasons[0]


def test_official_gate_example():
    gate = GateConfig.from_params({"gate": {"min": {"geneval/overall@1nfe": 0.83}}})
    assert check_gate({"geneval/overall@1nfe": 0.83}, gate).passed
    assert not check_gate({"geneval/overall@1nfe": 0.829}, gate).passed
    assert gate.champion_margin == 0.02


@pytest.mark.parametrize(
    "gate, message",
    [
        (None, "missing section 'gate'"),
        ({"min": {}}, "gate.min must map"),
        ({"min": {"a": "high"}}, "gate.min['a'] must be a number"),
        ({"min": {"a": 1}, "champion_margin": 1.5}, "champion_margin must be a fraction"),
        ({"min": {"a": 1}, "thresholds": {}}, "unknown key(s) ['thresholds']"),
    ],
)
def test_bad_gate_config_is_a_clear_error(gate, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GateConfig.from_params({} if gate is None else {"gate": gate})


RATIO = GateConfig.from_params(
    {"gate": {"min": {"geneval-shapes/overall@1nfe": 0.05}, "ratio": {"geneval-shapes/overall@1nfe": 0.8}}}
)
# what the evaluation publishes: the model, the base, their paired ratio and its standard error
SCORES = {
    "geneval-shapes/overall@1nfe": 0.4,
    "base/geneval-shapes/overall@euler50-cfg0.5": 0.5,
    "ratio/geneval-shapes/overall@1nfe": 0.8,
    "ratio/geneval-shapes/overall_se@1nfe": 0.05,
}


def test_ratio_passes_at_the_fraction_and_shows_it_with_its_standard_error():
    v = check_gate(SCORES, RATIO)
    assert v.passed
    assert v.reasons[1] == "ratio/geneval-shapes/overall@1nfe 0.800 ± 0.050 >= 0.8"


def test_the_gate_reads_the_published_ratio_and_never_divides_the_scores_itself():
    # the published ratio is paired over the same prompts (evaluate.ratio_reference, the reference's subset):
    # it need not equal the quotient of the two overall scores, and the gate must take it as published
    v = check_gate({**SCORES, "ratio/geneval-shapes/overall@1nfe": 0.79}, RATIO)
    assert not v.passed and v.reasons[0].endswith(">= 0.05")
    assert v.reasons[1] == "ratio/geneval-shapes/overall@1nfe 0.790 ± 0.050 < 0.8"
    assert ratio_values({**SCORES, "ratio/geneval-shapes/overall@1nfe": 0.79}, RATIO) == {
        "ratio/geneval-shapes/overall@1nfe": 0.79
    }


def test_a_ratio_the_evaluation_did_not_publish_fails_and_names_it():
    absent = {k: v for k, v in SCORES.items() if not k.startswith("ratio/")}
    v = check_gate({**absent, "ratio/geneval-shapes/overall@2nfe": 0.9}, RATIO)
    assert not v.passed
    assert v.reasons[1].startswith(
        "ratio/geneval-shapes/overall@1nfe missing from the evaluation (closest: ratio/geneval-shapes/overall@2nfe"
    )
    assert "publishes none where the reference scores 0" in v.reasons[1]


def test_a_ratio_alone_is_a_gate_and_its_metrics_are_listed():
    gate = GateConfig.from_params({"gate": {"ratio": {"dpg-shapes/score@1nfe": 0.9}}})
    assert gate.minimums == {} and gate.gated_metrics == ["ratio/dpg-shapes/score@1nfe"]
    assert check_gate({"ratio/dpg-shapes/score@1nfe": 0.9}, gate).passed
    assert not check_gate({"ratio/dpg-shapes/score@1nfe": 0.89}, gate).passed


@pytest.mark.parametrize(
    "ratio, message",
    [
        ([1], "gate.ratio must map metric names"),
        ({"geneval-shapes/overall@1nfe": "high"}, "must be a number >= 0"),
        ({"geneval-shapes/overall@1nfe": -1}, "must be a number >= 0"),
        ({"geneval-shapes/overall": 0.8}, "is not a metric name"),
        ({"ratio/geneval-shapes/overall@1nfe": 0.8}, "name the metric ('geneval-shapes/overall@1nfe')"),
        ({"geneval-shapes/overall@1nfe": {"min": 0.8, "max": 1}}, "must be a fraction"),
        (
            {"geneval-shapes/overall@1nfe": {"of": "base/geneval-shapes/overall@euler40-cfg0.5", "min": 0.8}},
            "evaluate divides by 'base/geneval-shapes/overall@euler50-cfg0.5' (evaluate.ratio_reference)",
        ),
    ],
)
def test_bad_ratio_config_is_a_clear_error(ratio, message):
    params = {"gate": {"min": {"a@1nfe": 1}, "ratio": ratio}, "evaluate": {"ratio_reference": "euler50-cfg0.5"}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        GateConfig.from_params(params)


def test_the_earlier_of_min_form_reads_where_of_is_the_published_reference(caplog):
    params = {
        "gate": {"ratio": {"dpg-shapes/score@1nfe": {"of": "base/dpg-shapes/score@euler50-cfg0.5", "min": 0.5}}},
        "evaluate": {"ratio_reference": "euler50-cfg0.5"},
    }
    assert GateConfig.from_params(params).ratios[0].min == 0.5
    assert "deprecated; write gate.ratio.dpg-shapes/score@1nfe: 0.5" in caplog.text


def test_the_committed_params_gate_reads_and_its_ratios_are_published_by_the_committed_evaluation():
    import json
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    gate = GateConfig.from_params(params)
    assert gate.ratios, "the default gate states the claim as a ratio"
    published = json.loads((root / "metrics" / "eval.json").read_text())
    assert all(r.published in published and r.standard_error in published for r in gate.ratios)


def test_a_ratio_with_min_0_is_reported_not_required():
    gate = GateConfig.from_params({"gate": {"min": {"a@1nfe": 0.0}, "ratio": {"geneval-shapes/overall@1nfe": 0}}})
    unpublished = check_gate({"a@1nfe": 0.0}, gate)  # the reference scored 0: the evaluation publishes no ratio
    assert unpublished.passed and "min 0: not required" in unpublished.reasons[1]
    shown = check_gate({"a@1nfe": 0.0, "ratio/geneval-shapes/overall@1nfe": 0.25}, gate)
    assert shown.passed and shown.reasons[1] == "ratio/geneval-shapes/overall@1nfe 0.250 >= 0"


def test_ratio_overrides_reach_the_gate_before_anything_runs(tmp_path):
    import shutil
    from pathlib import Path

    from flows.config_check import check_overrides

    root = Path(__file__).resolve().parents[1]
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "artifacts" / "bases").mkdir(parents=True)  # train.init, checked up front with the rest
    (tmp_path / "artifacts" / "bases" / "shapes24-fm").symlink_to(root / "artifacts" / "bases" / "shapes24-fm")
    check_overrides(["gate.ratio.geneval-shapes/overall@1nfe=0.5"], str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape("must be a number >= 0")):
        check_overrides(["gate.ratio.geneval-shapes/overall@1nfe=-0.5"], str(tmp_path))
    with pytest.raises(ConfigError, match="unknown key 'gate.ratio.dpg-shapes/score@1nfe.of'"):
        check_overrides(["gate.ratio.dpg-shapes/score@1nfe.of=euler50"], str(tmp_path))
