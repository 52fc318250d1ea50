"""The committed prompt sets: equal to a fresh generation, and in GenEval's / DPG-Bench's exact schemas."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from twinflow_core.data import prompt_sets
from twinflow_core.data.shapes import CLASSES, COLORS, RELATIONS

PROMPTS = Path("data/prompts")
TAGS = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}


def test_committed_files_equal_a_fresh_generation(tmp_path):
    prompt_sets.write_prompt_sets(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(PROMPTS) for p in PROMPTS.rglob("*") if p.is_file())
    assert fresh == committed
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (PROMPTS / rel).read_bytes(), rel


def test_geneval_schema_and_tags():
    lines = (PROMPTS / "geneval-shapes" / "evaluation_metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert Counter(r["tag"] for r in rows) == {
        "single_object": 4,
        "two_object": 12,
        "counting": 12,
        "colors": 24,
        "position": 40,
        "color_attr": 40,
    }
    assert len({r["prompt"] for r in rows}) == len(rows)
    for line, r in zip(lines, rows):
        assert list(r) in (["tag", "include", "prompt"], ["tag", "include", "exclude", "prompt"])
        assert r["tag"] in TAGS and r["prompt"].startswith("a photo of ")
        assert line == json.dumps(r)  # json.dumps' default separators, as GenEval writes
        for g in r["include"] + r.get("exclude", []):
            assert set(g) <= {"class", "count", "color", "position"}
            assert g["class"] in CLASSES and isinstance(g["count"], int)
            assert g.get("color", "red") in COLORS
        if r["tag"] == "counting":
            (inc,), (exc,) = r["include"], r["exclude"]
            assert exc == {"class": inc["class"], "count": inc["count"] + 1}
        if r["tag"] == "position":
            ref, moved = r["include"]
            rel, k = moved["position"]
            assert k == 0 and rel in RELATIONS and "position" not in ref
            assert r["prompt"] == f"a photo of a {moved['class']} {rel} a {ref['class']}"
        if r["tag"] == "color_attr":
            a, b = r["include"]
            assert a["class"] != b["class"] and a["color"] != b["color"]


def test_dpg_schema_and_question_graph():
    with (PROMPTS / "dpg-shapes" / "dpg_bench.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == prompt_sets.DPG_COLUMNS
        rows = list(reader)
    items = {}
    for r in rows:
        items.setdefault(r["item_id"], []).append(r)
    assert len(items) == 64
    for item_id, qs in items.items():
        text = (PROMPTS / "dpg-shapes" / "prompts" / f"{item_id}.txt").read_text().strip()
        assert {q["text"] for q in qs} == {text}
        ids = [int(q["proposition_id"]) for q in qs]
        assert ids == list(range(1, len(qs) + 1))
        for q in qs:
            parents = [int(p) for p in q["dependency"].split(",")]
            assert all(0 <= p < int(q["proposition_id"]) for p in parents)
            if q["category_broad"] == "relation":
                assert 0 not in parents and len(parents) == 2
            else:  # the root questions bind colour, class and count: no bare "Is there a circle?"
                assert parents == [0]
                assert q["category_broad"] in ("attribute", "other")
            assert q["tuple"].startswith(f"{q['category_broad']} - {q['category_detailed']} (")
            assert q["question_natural_language"].endswith("?")
        assert any(q["category_broad"] == "relation" for q in qs)


def test_dpg_items_match_their_questions():
    items = prompt_sets.load_dpg_items(PROMPTS)
    for item in items:
        qs = prompt_sets.dpg_questions(item)
        roots = [q for q in qs if q["dependency"] == "0"]
        assert len(roots) == len(item["groups"])
        for q, g in zip(roots, item["groups"]):  # each root names its group's colour and class
            assert g["color"] in q["question_natural_language"] and g["color"] in q["tuple"]
            assert g["class"] in q["question_natural_language"]
        assert sum(q["category_broad"] == "relation" for q in qs) == len(item["relations"])
        assert sum(q["category_detailed"] == "count" for q in qs) == sum(g["count"] > 1 for g in item["groups"])
