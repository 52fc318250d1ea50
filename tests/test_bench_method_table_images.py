"""bench/method_table_images.py: the equal-compute accounting (steps = CPU budget over the probed CPU cost per
step), its argument checks, the digits bootstrap and the table written from a run's result.json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "method_table_images.py"


def bench():
    spec = importlib.util.spec_from_file_location("method_table_images", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_budget_buys_each_method_its_own_number_of_steps():
    mt = bench()
    assert mt.steps_for_budget(90.0, 0.45) == 200
    assert mt.steps_for_budget(90.0, 0.3) == 300  # a cheaper step buys more steps for the same CPU seconds
    assert mt.steps_for_budget(1.0, 0.5) == 10  # never fewer than the minimum
    for budget, cost in ((0.0, 0.1), (-1.0, 0.1), (10.0, 0.0), (10.0, float("nan"))):
        with pytest.raises(ValueError):
            mt.steps_for_budget(budget, cost)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget-cpu-s", "0"], "--budget-cpu-s must be positive, got 0.0"),
        (["--probe-steps", "0"], "--probe-steps must be >= 1, got 0"),
        (["--base", "/nonexistent/base"], "--base /nonexistent/base: no model.json there"),
        (["--methods", "fm,nosuch"], "--methods: unknown nosuch; registered:"),
    ],
)
def test_bad_arguments_are_one_line_and_start_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 2
    assert message in proc.stderr.splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_digits_bootstrap_point_is_the_plain_score_and_a_model_against_itself_has_no_ratio_error():
    mt = bench()
    labels = [d for _ in range(6) for d in range(10)]
    rng = np.random.default_rng(0)
    ev = SimpleNamespace(ps=SimpleNamespace(labels=labels), real_a_feats=rng.normal(size=(60, 3)))
    scorer = mt.DigitsUnits(ev, n=20)
    u = {"correct": (rng.random(60) < 0.7).astype(float), "feats": rng.normal(size=(60, 3)) + 0.5}
    pt = scorer.point(u)
    assert pt["accuracy"] == pytest.approx(u["correct"].mean())
    same = mt.with_errors(scorer, ("accuracy", "fd"), u, u)
    assert same["accuracy_ratio"] == pytest.approx(1.0) and same["accuracy_ratio_se"] == pytest.approx(0.0)
    assert same["fd_ratio"] == pytest.approx(1.0) and same["fd_ratio_se"] == pytest.approx(0.0)
    assert same["accuracy_se"] > 0 and same["fd_se"] > 0
    # every resample keeps each class's count (stratified by class)
    assert all(np.bincount(np.asarray(labels)[s], minlength=10).tolist() == [6] * 10 for s in scorer.samples)


def score(v, se=0.01, ratio=1.0):
    return {
        "accuracy": v,
        "accuracy_se": se,
        "fd": 10 * v,
        "fd_se": se,
        "accuracy_ratio": ratio,
        "accuracy_ratio_se": se,
        "fd_ratio": ratio,
        "fd_ratio_se": se,
    }


def test_the_table_is_written_from_a_runs_result(tmp_path):
    mt = bench()
    run = tmp_path / "digits"
    run.mkdir()
    base = {n: score(0.9) for n in ("euler50-cfg0.5", "euler50", "euler1", "euler2", "euler4")}
    method = {
        "cost": {"cpu_sec_per_step": 0.3, "step_rss_mb": 12.0, "peak_rss_mb": 400.0},
        "steps": 300,
        "sampler": {"style": "few", "gaps": None},
        "training_cpu_s": 95.0,
        "nfe": {"1": score(0.8, ratio=0.89), "2": score(0.85), "4": score(0.88)},
    }
    (run / "result.json").write_text(
        json.dumps(
            {
                "domain": "digits",
                "base_training": {"steps": 1000, "cpu_seconds": 300.0},
                "budget_cpu_s": 90.0,
                "eval": {"n_images": 500},
                "base": {**base, "params": 1234},
                "methods": {"twinflow": method},
                "cpu_seconds_this_call": 900.0,
                "wall_seconds_this_call": 1000.0,
            }
        )
    )
    out = tmp_path / "table.md"
    text = mt.summarize([run], out, "bench/method_table_images.sh X")
    assert out.read_text() == text
    assert "`bench/method_table_images.sh X`" in text
    row = next(line for line in text.splitlines() if line.startswith("| twinflow"))
    assert row.startswith("| twinflow (few) | 300 | 0.300 | 95 | 12 (400) | 0.800±0.010 / 8.0±0.0 |")
    assert row.endswith("| 0.89±0.01 / 0.89±0.01 |")
    assert json.loads(out.with_suffix(".json").read_text())["datasets"]["digits"]["methods"]["twinflow"]["steps"] == 300
