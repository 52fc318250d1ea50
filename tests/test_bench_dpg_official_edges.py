"""dpg-summary --csv on inputs the official compute_dpg_bench.py scores without stopping (read against
TencentQQGYLab/ELLA dpg_bench/compute_dpg_bench.py): it must score them the same way, not exit."""

from __future__ import annotations

import json

import pytest

from flows.cli import main as cli
from twinflow_core.benchmarks import dpg_score


def test_official_edge_cases_are_scored_as_the_official_script_does(tmp_path, capsys):
    Q = dpg_score.Question
    rows = [
        Q("i0", 1, (0,), "entity - whole (cat)", "is there a cat?"),  # the first row: never asked officially
        Q("i0", 2, (0,), "entity - whole (cat)", "is there a cat?"),  # same text as the skipped row
        Q("i0", 3, (2,), "attribute - color (cat, red)", "is the cat red?"),
        Q("i1", 1, (0,), "entity - whole (dog)", "is there a dog?"),
        Q("i1", 2, (5,), "attribute - size (dog, big)", "is the dog big?"),  # parent 5 does not exist
        Q("i2", 1, (0,), "entity - whole (box)", "is there a box?"),
        Q("i2", 2, (0,), "attribute - color (box, blue)", "is the box blue?"),
    ]
    dpg_score.write_csv(rows, tmp_path / "q.csv")
    crop = "(0, 0, 6, 6)"
    answers = [
        ("i0", "is there a cat?", "yes"),
        ("i0", "is the cat red?", "yes"),
        ("i1", "is there a dog?", "yes"),
        ("i1", "is the dog big?", "yes"),
        ("i2", "is there a box?", "yes "),  # a trailing space: officially not 'yes'
        ("i2", "is the box blue?", "yes"),
    ]
    detail = tmp_path / "dpg_results_detail.txt"
    detail.write_text("".join(f"/imgs/{item}.png, {crop}, {q}, {a}\n" for item, q, a in answers))
    assert cli(["eval", "dpg-summary", str(detail), "--csv", str(tmp_path / "q.csv")]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    # i0: both asked questions yes -> 1; i1: KeyError on parent 5 -> the official loop drops the image; i2: 0.5
    assert out["official"]["dropped"] == ["i1"]
    assert out["official"]["score"] == pytest.approx(75.0)
    assert out["official"]["n_images"] == 2
    # corrected rules: i0 lacks an answer for the skipped row, i1 has a missing parent: only i2 is scored
    assert out["corrected"]["score"] == pytest.approx(50.0)
    assert out["corrected"]["incomplete"] == ["i0", "i1"]
