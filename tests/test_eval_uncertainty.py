"""Standard errors of stratified benchmark scores and of paired ratios, against direct computation."""

import math
import os

import numpy as np
import pytest

from twinflow_core.benchmarks.uncertainty import paired_ratio, score_se


def test_one_stratum_is_the_standard_error_of_the_mean():
    vals = [0.0, 0.5, 1.0, 1.0, 0.25]
    mean, se = score_se({str(i): ("dpg", v) for i, v in enumerate(vals)}, scale=100)
    assert mean == pytest.approx(100 * np.mean(vals))
    assert se == pytest.approx(100 * np.std(vals, ddof=1) / math.sqrt(len(vals)))


def test_strata_weigh_equally_like_genevals_tag_means():
    a = {"p1": ("x", 1.0), "p2": ("x", 0.0), "q1": ("y", 1.0), "q2": ("y", 1.0), "q3": ("y", 1.0)}
    mean, se = score_se(a)
    assert mean == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    assert se == pytest.approx(0.5 * math.sqrt(0.5 / 2))  # stratum y has no spread


def test_paired_ratio_matches_a_bootstrap_over_prompts_and_pairing_shrinks_it():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.1, 0.9, 80)
    b = np.clip(difficulty + rng.normal(0, 0.05, 80), 0, 1)
    a = np.clip(0.8 * difficulty + rng.normal(0, 0.05, 80), 0, 1)
    pa = {str(i): ("t", float(v)) for i, v in enumerate(a)}
    pb = {str(i): ("t", float(v)) for i, v in enumerate(b)}
    r, se = paired_ratio(pa, pb)
    assert r == pytest.approx(a.mean() / b.mean())
    boots = []
    for _ in range(2000):
        idx = rng.integers(0, 80, 80)
        boots.append(a[idx].mean() / b[idx].mean())
    assert se == pytest.approx(np.std(boots), rel=0.15)
    unpaired = r * math.sqrt((a.std(ddof=1) ** 2 / 80) / a.mean() ** 2 + (b.std(ddof=1) ** 2 / 80) / b.mean() ** 2)
    assert se < 0.5 * unpaired  # the same hard prompts are hard for both


def test_ratio_edge_cases():
    assert math.isnan(paired_ratio({"p": ("t", 1.0)}, {"p": ("t", 0.0)})[0])
    with pytest.raises(ValueError, match="no prompt scored by both"):
        paired_ratio({"p": ("t", 1.0)}, {"q": ("t", 1.0)})


def test_paired_ratios_names_and_a_zero_reference_gives_no_keys():
    from twinflow_core.benchmarks.uncertainty import paired_ratios

    per = {
        "geneval-shapes/overall@1nfe": {"p": ("t", 0.5), "q": ("t", 0.25)},
        "base/geneval-shapes/overall@1nfe": {"p": ("t", 0.0), "q": ("t", 0.0)},
        "base/geneval-shapes/overall@euler50-cfg0.5": {"p": ("t", 1.0), "q": ("t", 0.5)},
        "dpg-shapes/score@1nfe": {"a": ("dpg", 0.5)},
        "base/dpg-shapes/score@euler50-cfg0.5": {"a": ("dpg", 0.0)},
    }
    out = paired_ratios(per, "euler50-cfg0.5")
    assert sorted(out) == [
        "ratio/base/geneval-shapes/overall@1nfe",
        "ratio/base/geneval-shapes/overall_se@1nfe",
        "ratio/geneval-shapes/overall@1nfe",
        "ratio/geneval-shapes/overall_se@1nfe",
    ]
    assert (
        out["ratio/geneval-shapes/overall@1nfe"] == pytest.approx(0.5)
        and out["ratio/base/geneval-shapes/overall@1nfe"] == 0
    )


def test_a_paired_ratio_is_bitwise_the_same_in_every_process():
    """metrics/eval.json reproduces bitwise only if its ratios do not depend on the process's string-hash seed
    (Python draws one per process): the same scores in two processes with different seeds give the same bits."""
    import subprocess
    import sys

    code = (
        "import random; from twinflow_core.benchmarks.uncertainty import paired_ratio as f; "
        "rng = random.Random(0); ids = [f'prompt-{i}' for i in range(200)]; "
        "a = {p: ('t' + str(i % 3), rng.random()) for i, p in enumerate(ids)}; "
        "b = {p: ('t' + str(i % 3), rng.random() + 0.5) for i, p in enumerate(ids)}; "
        "print(repr(f(a, b)))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True
        ).stdout
        for seed in ("1", "2", "3", "4")
    }
    assert len(outs) == 1 and next(iter(outs)).startswith("("), outs
