"""The promotion gate: exact metric names with minimums (params.yaml `gate:`), and the rule that a new
champion may not be worse than the current one by more than a set margin. Pure functions, no MLflow.

A gate names the exact metric it compares (`geneval-shapes/overall@1nfe` is the embedded benchmark,
`geneval/overall@1nfe` the official one); a missing metric fails the gate, never silently passes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from twinflow_core.errors import ConfigError


@dataclass(frozen=True)
class GateConfig:
    minimums: dict[str, float]
    champion_margin: float = 0.02  # relative: a champion may be replaced by one >= (1 - margin) x its score

    @classmethod
    def from_params(cls, params: dict, where: str = "params.yaml") -> "GateConfig":
        gate = params.get("gate")
        if not isinstance(gate, dict):
            raise ConfigError(f"{where}: missing section 'gate' (metric minimums for promotion)")
        unknown = set(gate) - {"min", "champion_margin"}
        if unknown:
            raise ConfigError(f"{where}: gate has unknown key(s) {sorted(unknown)}; expected min, champion_margin")
        mins = gate.get("min")
        if not isinstance(mins, dict) or not mins:
            raise ConfigError(f"{where}: gate.min must map metric names to minimums, e.g. "
                              "{'geneval-shapes/overall@1nfe': 0.5}")
        for name, value in mins.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: gate.min[{name!r}] must be a number, got {value!r}")
        margin = gate.get("champion_margin", 0.02)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ConfigError(f"{where}: gate.champion_margin must be a fraction in [0, 1), got {margin!r}")
        return cls(minimums={str(k): float(v) for k, v in mins.items()}, champion_margin=float(margin))


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "passed" if self.passed else "failed"

    def text(self) -> str:
        return "; ".join(self.reasons)


def check_gate(scores: dict[str, float], gate: GateConfig) -> Verdict:
    """Every gated metric must be present and at least its minimum."""
    reasons, passed = [], True
    for name, minimum in gate.minimums.items():
        if name not in scores:
            passed = False
            reasons.append(f"{name} missing from the evaluation (have: {', '.join(sorted(scores)) or 'none'})")
        elif scores[name] < minimum:
            passed = False
            reasons.append(f"{name} {scores[name]:.4g} < {minimum:.4g}")
        else:
            reasons.append(f"{name} {scores[name]:.4g} >= {minimum:.4g}")
    return Verdict(passed, reasons)


def compare_to_champion(scores: dict[str, float], champion: dict[str, float], gate: GateConfig) -> Verdict:
    """Not worse than the champion by more than the margin on any gated metric the champion has."""
    reasons, passed = [], True
    for name in gate.minimums:
        if name not in champion or name not in scores:
            continue  # the champion predates this metric: nothing to compare against
        floor = champion[name] - gate.champion_margin * abs(champion[name])
        if scores[name] < floor:
            passed = False
            reasons.append(f"{name} {scores[name]:.4g} < champion {champion[name]:.4g} "
                           f"- {gate.champion_margin:.0%} margin")
        else:
            reasons.append(f"{name} {scores[name]:.4g} within {gate.champion_margin:.0%} of champion "
                           f"{champion[name]:.4g} or better")
    return Verdict(passed, reasons)
