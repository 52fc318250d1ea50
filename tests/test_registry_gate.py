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
    {
        "gate": {
            "min": {"geneval-shapes/overall@1nfe": 0.05},
            "ratio": {"geneval-shapes/overall@1nfe": {"of": "base/geneval-shapes/overall@euler50-cfg0.5", "min": 0.8}},
        }
    }
)


def test_ratio_passes_at_the_fraction_and_shows_it():
    v = check_gate({"geneval-shapes/overall@1nfe": 0.4, "base/geneval-shapes/overall@euler50-cfg0.5": 0.5}, RATIO)
    assert v.passed
    assert v.reasons[1] == (
        "geneval-shapes/overall@1nfe / base/geneval-shapes/overall@euler50-cfg0.5 = 0.800 (0.4 / 0.5) >= 0.8"
    )


def test_ratio_below_the_fraction_fails_even_when_the_minimum_holds():
    v = check_gate({"geneval-shapes/overall@1nfe": 0.39, "base/geneval-shapes/overall@euler50-cfg0.5": 0.5}, RATIO)
    assert not v.passed and v.reasons[0].endswith(">= 0.05") and "= 0.780" in v.reasons[1]
    assert ratio_values(
        {"geneval-shapes/overall@1nfe": 0.39, "base/geneval-shapes/overall@euler50-cfg0.5": 0.5}, RATIO
    ) == {"geneval-shapes/overall@1nfe / base/geneval-shapes/overall@euler50-cfg0.5": pytest.approx(0.78)}


def test_ratio_with_a_missing_or_zero_reference_fails_and_names_it():
    v = check_gate({"geneval-shapes/overall@1nfe": 0.4, "base/geneval-shapes/overall@euler50": 0.5}, RATIO)
    assert not v.passed
    assert v.reasons[1].startswith(
        "base/geneval-shapes/overall@euler50-cfg0.5 missing from the evaluation "
        "(closest: base/geneval-shapes/overall@euler50"
    )
    zero = check_gate({"geneval-shapes/overall@1nfe": 0.4, "base/geneval-shapes/overall@euler50-cfg0.5": 0.0}, RATIO)
    assert not zero.passed and "not positive" in zero.reasons[1]


def test_a_ratio_alone_is_a_gate_and_its_metrics_are_listed():
    gate = GateConfig.from_params(
        {"gate": {"ratio": {"dpg-shapes/score@1nfe": {"of": "base/dpg-shapes/score@euler50", "min": 0.9}}}}
    )
    assert gate.minimums == {} and gate.gated_metrics == ["dpg-shapes/score@1nfe", "base/dpg-shapes/score@euler50"]
    assert check_gate({"dpg-shapes/score@1nfe": 45.0, "base/dpg-shapes/score@euler50": 50.0}, gate).passed


@pytest.mark.parametrize(
    "ratio, message",
    [
        ([1], "gate.ratio must map metric names"),
        ({"geneval-shapes/overall@1nfe": 0.8}, "must be {of: <reference metric>, min: <fraction>}"),
        (
            {"geneval-shapes/overall@1nfe": {"of": "base/geneval-shapes/overall@euler50", "min": -1}},
            ".min must be a number >= 0",
        ),
        ({"geneval-shapes/overall": {"of": "base/geneval-shapes/overall@euler50", "min": 0.8}}, "is not a metric name"),
        ({"geneval-shapes/overall@1nfe": {"of": "euler50", "min": 0.8}}, "'euler50' is not a metric name"),
        ({"geneval-shapes/overall@1nfe": {"of": "geneval-shapes/overall@1nfe", "min": 0.8}}, "against itself"),
    ],
)
def test_bad_ratio_config_is_a_clear_error(ratio, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GateConfig.from_params({"gate": {"min": {"a": 1}, "ratio": ratio}})


def test_the_committed_params_gate_reads_and_its_ratios_name_metrics_the_evaluate_stage_writes():
    from pathlib import Path

    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    gate = GateConfig.from_params(params)
    assert gate.ratios, "the default gate states the claim as a ratio"
    labels = {
        f"euler{params['evaluate']['base_steps']}" + (f"-cfg{float(w):g}" if w else "")
        for w in params["evaluate"]["base_cfg"]
    }
    for r in gate.ratios:
        assert r.of.startswith("base/") and r.of.rsplit("@", 1)[1] in labels


def test_a_ratio_with_min_0_is_reported_not_required():
    gate = GateConfig.from_params(
        {
            "gate": {
                "min": {"a@1nfe": 0.0},
                "ratio": {
                    "geneval-shapes/overall@1nfe": {"of": "base/geneval-shapes/overall@euler50-cfg0.5", "min": 0}
                },
            }
        }
    )
    zero = check_gate(
        {"a@1nfe": 0.0, "geneval-shapes/overall@1nfe": 0.0, "base/geneval-shapes/overall@euler50-cfg0.5": 0.0}, gate
    )
    assert zero.passed and "not positive" in zero.reasons[1]
    shown = check_gate(
        {"a@1nfe": 0.0, "geneval-shapes/overall@1nfe": 0.1, "base/geneval-shapes/overall@euler50-cfg0.5": 0.4}, gate
    )
    assert shown.passed and "= 0.250" in shown.reasons[1]


def test_ratio_overrides_reach_the_gate_before_anything_runs(tmp_path):
    import shutil
    from pathlib import Path

    from flows.config_check import check_overrides

    root = Path(__file__).resolve().parents[1]
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "artifacts" / "bases").mkdir(parents=True)  # train.init, checked up front with the rest
    (tmp_path / "artifacts" / "bases" / "shapes24-fm").symlink_to(root / "artifacts" / "bases" / "shapes24-fm")
    check_overrides(["gate.ratio.geneval-shapes/overall@1nfe.min=0.5"], str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape(".min must be a number >= 0")):
        check_overrides(["gate.ratio.geneval-shapes/overall@1nfe.min=-0.5"], str(tmp_path))
    with pytest.raises(ConfigError, match="is not a metric name"):
        check_overrides(["gate.ratio.dpg-shapes/score@1nfe.of=euler50"], str(tmp_path))
