"""The promotion gate: exact metric names with minimums (params.yaml `gate:`), ratios of one metric to a
reference metric (the paper's claim: 1 NFE at least a fraction of the many-step base), and the rule that a
new champion may not be worse than the current one by more than a set margin. Pure functions, no MLflow.

    gate:
      min:   {geneval-shapes/overall@1nfe: 0.05}
      ratio: {geneval-shapes/overall@1nfe: {of: base/geneval-shapes/overall@euler50-cfg0.5, min: 0.8}}

A gate names the exact metric it compares (`geneval-shapes/overall@1nfe` is the embedded benchmark,
`geneval/overall@1nfe` the official one); a missing metric fails the gate, never silently passes it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from twinflow_core.errors import ConfigError

# <benchmark>/<metric>@<setting>, optionally under a model prefix: base/geneval-shapes/overall@euler50-cfg0.5
METRIC_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)+@[\w.-]+$")


@dataclass(frozen=True)
class Ratio:
    """`metric` / `of` (both from the same metrics/eval.json) must be at least `min`; min 0 reports the ratio
    in the verdict without requiring anything (e.g. a smoke run whose untrained nets score 0)."""

    metric: str
    of: str
    min: float

    def name(self) -> str:
        return f"{self.metric} / {self.of}"


@dataclass(frozen=True)
class GateConfig:
    minimums: dict[str, float]
    champion_margin: float = 0.02  # relative: a champion may be replaced by one >= (1 - margin) x its score
    ratios: tuple[Ratio, ...] = ()

    @property
    def gated_metrics(self) -> list[str]:
        """Every metric a verdict reads (minimums first, then ratio numerators and references)."""
        names = list(self.minimums)
        for r in self.ratios:
            names += [r.metric, r.of]
        return list(dict.fromkeys(names))

    @classmethod
    def from_params(cls, params: dict, where: str = "params.yaml") -> GateConfig:
        gate = params.get("gate")
        if not isinstance(gate, dict):
            raise ConfigError(f"{where}: missing section 'gate' (metric minimums for promotion)")
        unknown = set(gate) - {"min", "ratio", "champion_margin"}
        if unknown:
            raise ConfigError(
                f"{where}: gate has unknown key(s) {sorted(unknown)}; expected min, ratio, champion_margin"
            )
        mins = gate.get("min") or {}
        ratios = _ratios(gate.get("ratio"), where)
        if not isinstance(mins, dict) or not (mins or ratios):
            raise ConfigError(
                f"{where}: gate.min must map metric names to minimums, e.g. "
                "{'geneval-shapes/overall@1nfe': 0.5} (or give gate.ratio)"
            )
        for name, value in mins.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: gate.min[{name!r}] must be a number, got {value!r}")
        margin = gate.get("champion_margin", 0.02)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ConfigError(f"{where}: gate.champion_margin must be a fraction in [0, 1), got {margin!r}")
        return cls(minimums={str(k): float(v) for k, v in mins.items()}, champion_margin=float(margin), ratios=ratios)


def _check_name(name: str, where: str) -> None:
    if not METRIC_NAME.match(name):
        raise ConfigError(
            f"{where}: {name!r} is not a metric name of metrics/eval.json "
            "(<benchmark>/<metric>@<setting>, e.g. geneval-shapes/overall@1nfe)"
        )


def _ratios(raw, where: str) -> tuple[Ratio, ...]:
    if raw is None:
        return ()
    example = "{'geneval-shapes/overall@1nfe': {of: 'base/geneval-shapes/overall@euler50-cfg0.5', min: 0.8}}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: gate.ratio must map metric names to {{of, min}}, e.g. {example}")
    out = []
    for name, spec in raw.items():
        at = f"{where}: gate.ratio[{name!r}]"
        if not isinstance(spec, dict) or set(spec) != {"of", "min"}:
            raise ConfigError(f"{at} must be {{of: <reference metric>, min: <fraction>}}, got {spec!r}")
        value = spec["min"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{at}.min must be a number >= 0 (0: reported, not required), got {value!r}")
        _check_name(str(name), f"{where}: gate.ratio")
        _check_name(str(spec["of"]), f"{at}.of")
        if str(spec["of"]) == str(name):
            raise ConfigError(f"{at}.of: a metric cannot be gated against itself")
        out.append(Ratio(str(name), str(spec["of"]), float(value)))
    return tuple(out)


def check_settings(
    gate: GateConfig, model_settings: list[str], base_settings: list[str], where: str = "params.yaml"
) -> None:
    """Every gated metric must name a setting the evaluation publishes (the part after '@': `1nfe` for the
    trained model, `euler50-cfg0.5` for the base, from evaluate's nfe / base_nfe / base_steps / base_cfg), so
    that a change to `evaluate` that the gate does not follow fails before the run, not at registration."""
    for name in gate.gated_metrics:
        setting = name.rpartition("@")[2]
        base = name.startswith("base/") or name.startswith("ratio/base/")
        published = base_settings if base else model_settings
        if setting != "real" and setting not in published:
            raise ConfigError(
                f"{where}: gate names {name!r}, but evaluate publishes {'base' if base else 'model'} "
                f"settings {published} (evaluate.nfe / base_nfe / base_steps / base_cfg); "
                "change the gate with them"
            )


def _missing(name: str, scores: dict[str, float]) -> str:
    near = difflib.get_close_matches(name, list(scores), n=3, cutoff=0.6)
    hint = f"closest: {', '.join(near)}" if near else f"have: {', '.join(sorted(scores)[:8]) or 'none'}"
    return f"{name} missing from the evaluation ({hint})"


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
    """Every gated metric must be present and at least its minimum; every ratio at least its fraction."""
    reasons, passed = [], True
    for name, minimum in gate.minimums.items():
        if name not in scores:
            passed = False
            reasons.append(_missing(name, scores))
        elif scores[name] < minimum:
            passed = False
            reasons.append(f"{name} {scores[name]:.4g} < {minimum:.4g}")
        else:
            reasons.append(f"{name} {scores[name]:.4g} >= {minimum:.4g}")
    for r in gate.ratios:
        required = r.min > 0
        absent = [n for n in (r.metric, r.of) if n not in scores]
        if absent:
            passed = passed and not required
            reasons += [_missing(n, scores) + ("" if required else " (ratio min 0: not required)") for n in absent]
            continue
        num, den = scores[r.metric], scores[r.of]
        if den <= 0:
            passed = passed and not required
            reasons.append(f"{r.name()}: reference {den:.4g} is not positive, no ratio")
            continue
        value = num / den
        ok = value >= r.min
        passed = passed and ok
        reasons.append(f"{r.metric} / {r.of} = {value:.3f} ({num:.4g} / {den:.4g}) {'>=' if ok else '<'} {r.min:g}")
    return Verdict(passed, reasons)


def ratio_values(scores: dict[str, float], gate: GateConfig) -> dict[str, float]:
    """The gated ratios that can be computed from `scores`, named 'metric / reference'."""
    return {
        r.name(): scores[r.metric] / scores[r.of]
        for r in gate.ratios
        if r.metric in scores and r.of in scores and scores[r.of] > 0
    }


def compare_to_champion(scores: dict[str, float], champion: dict[str, float], gate: GateConfig) -> Verdict:
    """Not worse than the champion by more than the margin on any gated metric the champion has."""
    reasons, passed = [], True
    for name in gate.minimums:
        if name not in champion or name not in scores:
            continue  # the champion predates this metric: nothing to compare against
        floor = champion[name] - gate.champion_margin * abs(champion[name])
        if scores[name] < floor:
            passed = False
            reasons.append(
                f"{name} {scores[name]:.4g} < champion {champion[name]:.4g} - {gate.champion_margin:.0%} margin"
            )
        else:
            reasons.append(
                f"{name} {scores[name]:.4g} within {gate.champion_margin:.0%} of champion "
                f"{champion[name]:.4g} or better"
            )
    return Verdict(passed, reasons)
