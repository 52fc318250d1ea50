"""bench/finetune_curve.py's bootstrap: its point scores are the benchmarks' own overall figures, and the paired
ratio of a model to itself has no error while two different models' ratio does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from twinflow_core.benchmarks import geneval_score
from twinflow_core.benchmarks.protocol import PromptSet

ROOT = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("finetune_curve", ROOT / "bench" / "finetune_curve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_eval(k=2, per_tag=(3, 5), items=4, dim=3, seed=0):
    """A prompt set of two tags (3 and 5 prompts) and 4 dpg items, k images each, with random real features."""
    ps = PromptSet([], [])
    for t, n in enumerate(per_tag):
        for p in range(n):
            meta = {"tag": f"tag{t}", "prompt": f"p{t}-{p}"}
            ps.captions += [meta["prompt"]] * k
            ps.geneval_meta += [meta] * k
    ps.n_geneval = len(ps.captions)
    for i in range(items):
        ps.captions += [f"item{i}"] * k
        ps.dpg_items += [f"d{i}"] * k
    rng = np.random.default_rng(seed)
    return SimpleNamespace(ps=ps, real_a_feats=rng.normal(size=(len(ps.captions), dim)))


def units(ev, seed):
    rng = np.random.default_rng(seed)
    n, items = ev.ps.n_geneval, len(set(ev.ps.dpg_items))
    return {
        "correct": (rng.random(n) < 0.5).astype(float),
        "dpg": rng.random(items),
        "feats": rng.normal(size=(len(ev.ps.captions), ev.real_a_feats.shape[1])),
    }


def test_point_scores_match_the_benchmark_summaries():
    fc, ev = bench(), fake_eval()
    rs = fc.Resampler(ev, k=2, n=20)
    u = units(ev, 1)
    rows = [
        {"tag": m["tag"], "correct": bool(c), "metadata": json.dumps(m)}
        for m, c in zip(ev.ps.geneval_meta, u["correct"])
    ]
    pt = rs.point(u)
    assert abs(pt["geneval"] - geneval_score.summarize(rows)["overall"]) < 1e-12
    assert abs(pt["dpg"] - 100 * u["dpg"].mean()) < 1e-9
    from twinflow_core.benchmarks.features import frechet_distance

    assert abs(pt["fd"] - frechet_distance(u["feats"], ev.real_a_feats)) < 1e-9


def test_paired_ratio_errors():
    fc, ev = bench(), fake_eval()
    rs = fc.Resampler(ev, k=2, n=50)
    a, b = units(ev, 1), units(ev, 2)
    same = fc.with_errors(rs, a, a)
    assert same["geneval_ratio"] == 1.0 and same["geneval_ratio_se"] < 1e-12 and same["dpg_ratio_se"] < 1e-12
    other = fc.with_errors(rs, a, b)
    assert other["geneval_se"] > 0 and other["dpg_ratio_se"] > 0 and other["fd_ratio_se"] > 0
