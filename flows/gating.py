"""The promotion gate: exact metric names with minimums (params.yaml `gate:`), minimums on the ratios the evaluation
publishes (the paper's claim: 1 NFE at least a fraction of the many-step base), and the rule that a new champion
may not be worse than the current one by more than a set margin. Pure functions, no MLflow.

    gate:
      min:   {geneval-shapes/overall@1nfe: 0.05}
      ratio: {geneval-shapes/overall@1nfe: 0.8}

A gate names the exact metric it compares (`geneval-shapes/overall@1nfe` is the embedded benchmark,
`geneval/overall@1nfe` the official one); a missing metric fails the gate, never silently passes it. A ratio is
not computed here: `gate.ratio.<metric>` reads the evaluation's own `ratio/<metric>` (the model over the base at
`evaluate.ratio_reference`, paired over the same prompts, with its standard error `ratio/<bench>/<m>_se@<s>`),
so the verdict, metrics/eval.json and the plots show one number.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field

from twinflow_core.errors import ConfigError

_log = logging.getLogger(__name__)  # the deprecated ratio form: one line on stderr

# <benchmark>/<metric>@<setting>, optionally under a model prefix: base/geneval-shapes/overall@euler50-cfg0.5
METRIC_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)+@[\w.-]+$")
RATIO_PREFIX = "ratio/"


@dataclass(frozen=True)
class Ratio:
    """The evaluation's `ratio/<metric>` must be at least `min`; min 0 reports the ratio in the verdict without
    requiring anything (e.g. a smoke run whose untrained nets score 0, where the evaluation publishes no ratio)."""

    metric: str  # the model's metric, e.g. geneval-shapes/overall@1nfe
    min: float

    @property
    def published(self) -> str:
        """Its name in metrics/eval.json."""
        return RATIO_PREFIX + self.metric

    @property
    def standard_error(self) -> str:
        """The name of its standard error in metrics/eval.json (`ratio/<bench>/<metric>_se@<setting>`)."""
        name, _, setting = self.published.rpartition("@")
        return f"{name}_se@{setting}"


@dataclass(frozen=True)
class GateConfig:
    minimums: dict[str, float]
    champion_margin: float = 0.02  # relative: a champion may be replaced by one >= (1 - margin) x its score
    ratios: tuple[Ratio, ...] = ()

    @property
    def gated_metrics(self) -> list[str]:
        """Every metric a verdict reads (minimums first, then the published ratios)."""
        return list(dict.fromkeys([*self.minimums, *(r.published for r in self.ratios)]))

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
        reference = (params.get("evaluate") or {}).get("ratio_reference")
        ratios = _ratios(gate.get("ratio"), reference, where)
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


def _deprecated_min(spec: dict, name: str, reference: str | None, at: str) -> object:
    """The minimum of the earlier `{of: <reference metric>, min: <fraction>}` form, accepted where `of` is the
    reference the evaluation divides by (anything else would gate a number the evaluation does not publish)."""
    if not spec.keys() <= {"of", "min"} or "min" not in spec:
        raise ConfigError(f"{at} must be a fraction (the minimum of evaluate's ratio/{name}), got {spec!r}")
    if "of" in spec:
        expected = f"base/{name.rpartition('@')[0]}@{reference}" if reference else None
        if str(spec["of"]) != expected:
            divides = f"{expected!r} (evaluate.ratio_reference)" if expected else "nothing (no ratio_reference)"
            raise ConfigError(
                f"{at}.of: {spec['of']!r}, but evaluate divides by {divides}; "
                f"write gate.ratio.{name}: <fraction> and set evaluate.ratio_reference"
            )
    _log.warning("%s: {of, min} is deprecated; write gate.ratio.%s: %s", at, name, spec["min"])
    return spec["min"]


def _ratios(raw, reference: str | None, where: str) -> tuple[Ratio, ...]:
    if raw is None:
        return ()
    example = "{'geneval-shapes/overall@1nfe': 0.8} (evaluate's ratio/geneval-shapes/overall@1nfe >= 0.8)"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: gate.ratio must map metric names to minimum fractions, e.g. {example}")
    out = []
    for name, value in raw.items():
        name = str(name)
        at = f"{where}: gate.ratio[{name!r}]"
        _check_name(name, f"{where}: gate.ratio")
        if name.startswith(RATIO_PREFIX):
            raise ConfigError(f"{at}: name the metric ({name[len(RATIO_PREFIX) :]!r}); the gate reads its ratio")
        if isinstance(value, dict):
            value = _deprecated_min(value, name, reference, at)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{at} must be a number >= 0 (0: reported, not required), got {value!r}")
        out.append(Ratio(name, float(value)))
    return tuple(out)


def check_settings(
    gate: GateConfig,
    model_settings: list[str],
    base_settings: list[str],
    ratio_reference: str = "",
    where: str = "params.yaml",
) -> None:
    """Every gated metric must name a setting the evaluation publishes (the part after '@': `1nfe` for the
    trained model, `euler50-cfg0.5` for the base, from evaluate's nfe / base_nfe / base_steps / base_cfg), and a
    required ratio needs the evaluation to publish ratios (evaluate.ratio_reference), so that a change to
    `evaluate` that the gate does not follow fails before the run, not at registration."""
    required = [r.metric for r in gate.ratios if r.min > 0]
    if required and not ratio_reference:
        raise ConfigError(
            f"{where}: gate.ratio requires {required[0]!r}, but evaluate publishes no ratios "
            "(evaluate.ratio_reference is unset or base_steps is 0); set it or the gate's ratio minimums to 0"
        )
    for name in gate.gated_metrics:
        setting = name.rpartition("@")[2]
        plain = name.removeprefix(RATIO_PREFIX)
        base = plain.startswith("base/")
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
        if r.published not in scores:
            passed = passed and not required
            why = " (the evaluation publishes none where the reference scores 0)"
            reasons.append(_missing(r.published, scores) + why + ("" if required else "; min 0: not required"))
            continue
        value, se = scores[r.published], scores.get(r.standard_error)
        ok = value >= r.min
        passed = passed and ok
        shown = f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")
        reasons.append(f"{r.published} {shown} {'>=' if ok else '<'} {r.min:g}")
    return Verdict(passed, reasons)


def ratio_values(scores: dict[str, float], gate: GateConfig) -> dict[str, float]:
    """The gated ratios the evaluation published, by their metrics/eval.json names."""
    return {r.published: scores[r.published] for r in gate.ratios if r.published in scores}


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
