"""Standard errors of the benchmark scores and of a ratio of two models' scores on the same prompts.

Both benchmark scores are means of per-prompt means over strata: GenEval's overall is the unweighted mean of
its six tag means (each tag mean a mean over that tag's prompts), DPG's score is 100 x the mean over items
(one stratum). Prompts are the sampling unit (the images of one prompt share it, so they are not independent
draws): the variance of a stratum mean is the between-prompt variance of the per-prompt means over the number
of prompts, and the score's variance is the weighted sum over strata.

A ratio A / B of two models scored on the same prompts is paired: its standard error by the delta method,
Var(A/B) ~ (A/B)^2 (Var A / A^2 + Var B / B^2 - 2 Cov(A, B) / (A B)), with Cov from the per-prompt pairs
(a prompt that is hard for one model tends to be hard for the other, which shrinks the ratio's error).

`paired_ratios` puts the paper's claim as numbers on an evaluation's per-prompt scores:
`ratio/<bench>/<metric>@<setting>` = the model at <setting> / the base at the reference setting (`ratio_reference`,
e.g. euler50-cfg0.5) on the same prompts, with `ratio/<bench>/<metric>_se@<setting>` (delta method, paired over
prompts); `ratio/base/...@1nfe` is the base's own 1-step collapse on that scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

PerPrompt = Mapping[str, tuple[str, float]]  # prompt id -> (stratum, that prompt's mean score)


def _strata(values: PerPrompt) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pid, (stratum, _) in values.items():
        out.setdefault(stratum, []).append(pid)
    return out


def _moments(a: PerPrompt, b: PerPrompt | None = None, scale: float = 1.0) -> tuple[float, float, float, float]:
    """(A, B, Var A, Cov(A, B)) of the stratified means (B, Cov are 0 without b)."""
    strata = _strata(a)
    w = 1.0 / len(strata)
    mean_a = mean_b = var = cov = 0.0
    for pids in strata.values():
        n = len(pids)
        xa = [a[p][1] for p in pids]
        xb = [b[p][1] for p in pids] if b is not None else [0.0] * n
        ma, mb = sum(xa) / n, sum(xb) / n
        mean_a += w * ma
        mean_b += w * mb
        if n > 1:
            var += w * w * sum((x - ma) ** 2 for x in xa) / (n - 1) / n
            cov += w * w * sum((x - ma) * (y - mb) for x, y in zip(xa, xb)) / (n - 1) / n
    return scale * mean_a, scale * mean_b, scale * scale * var, scale * scale * cov


def score_se(values: PerPrompt, scale: float = 1.0) -> tuple[float, float]:
    """(score, its standard error) of a stratified mean of per-prompt scores."""
    if not values:
        raise ValueError("no per-prompt scores")
    mean, _, var, _ = _moments(values, None, scale)
    return mean, math.sqrt(var)


def paired_ratio(a: PerPrompt, b: PerPrompt, scale: float = 1.0) -> tuple[float, float]:
    """(A / B, its delta-method standard error) over the prompts both were scored on; nan when B is 0."""
    # in a's order, not a set's: a set of strings iterates in an order that changes with each process's hash
    # seed, and float sums in another order differ in the last bits (metrics/eval.json must reproduce bitwise)
    common = [p for p in a if p in b]
    if not common:
        raise ValueError("no prompt scored by both models")
    a = {p: a[p] for p in common}
    b = {p: b[p] for p in common}
    ma, _, va, _ = _moments(a, None, scale)
    mb, _, vb, _ = _moments(b, None, scale)
    _, _, _, cab = _moments(a, b, scale)
    if mb <= 0:
        return math.nan, math.nan
    r = ma / mb
    if ma <= 0:  # the delta method's relative terms need A > 0: the ratio's error is then B's alone
        return r, math.sqrt(va) / mb
    rel = va / ma**2 + vb / mb**2 - 2 * cab / (ma * mb)
    return r, abs(r) * math.sqrt(max(rel, 0.0))


def paired_ratios(per_prompt: dict, reference: str) -> dict[str, float]:
    """`ratio/<M>@<s>` and `ratio/<M>_se@<s>` for every per-prompt score `<M>@<s>` (TwinFlow's and the base's
    few-step ones) against `base/<M>@<reference>`; when the reference ran on a prompt subset (-refset names),
    the subset's scores are the ones paired. A reference that scored 0 gives no ratio (the keys are absent)."""
    out: dict[str, float] = {}
    for key, values in per_prompt.items():
        name, _, label = key.rpartition("@")
        if label == reference:
            continue
        bench, _, metric = name.removeprefix("base/").partition("/")
        model = "base/" if name.startswith("base/") else ""
        ref = per_prompt.get(f"base/{bench}/{metric}@{reference}")
        if ref is None:
            continue
        r, se = paired_ratio(values, ref)  # a ratio is scale-free: DPG's x100 cancels
        if r != r:  # the reference scored 0: no ratio (eval.json stays plain JSON, without NaN)
            continue
        out[f"ratio/{model}{bench}/{metric}@{label}"] = r
        out[f"ratio/{model}{bench}/{metric}_se@{label}"] = se
    return out
