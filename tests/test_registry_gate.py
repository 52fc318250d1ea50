"""The promotion gate as pure functions: thresholds, missing metrics, champion margin, config errors."""
import re

import pytest

from flows.gating import GateConfig, check_gate, compare_to_champion
from twinflow_core.errors import ConfigError

GATE = GateConfig.from_params({"gate": {"min": {"geneval-shapes/overall@1nfe": 0.5, "dpg-shapes/score@1nfe": 50},
                                        "champion_margin": 0.05}})


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


@pytest.mark.parametrize("gate, message", [
    (None, "missing section 'gate'"),
    ({"min": {}}, "gate.min must map"),
    ({"min": {"a": "high"}}, "gate.min['a'] must be a number"),
    ({"min": {"a": 1}, "champion_margin": 1.5}, "champion_margin must be a fraction"),
    ({"min": {"a": 1}, "thresholds": {}}, "unknown key(s) ['thresholds']"),
])
def test_bad_gate_config_is_a_clear_error(gate, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GateConfig.from_params({} if gate is None else {"gate": gate})
