"""DPG-Bench scoring rules on canned answers: yes/no, cascading zeroing, means, categories, official defects."""

import pytest

from twinflow_core.benchmarks.dpg_score import (
    Question,
    group_questions,
    read_csv,
    score_item,
    summarize,
    summary_metrics,
    write_csv,
)
from twinflow_core.errors import DataError


def q(item, qid, dep, tup):
    return Question(item_id=item, proposition_id=qid, dependency=tuple(dep), tuple=tup, question=f"q{qid}?")


# item "a": 1 entity; 2 attribute of 1; 3 relation needing 1 and 2; 4 global (no parent)
A = [
    q("a", 1, [0], "entity - whole (cat)"),
    q("a", 2, [1], "attribute - color (cat, red)"),
    q("a", 3, [1, 2], "relation - spatial (cat, box, left of)"),
    q("a", 4, [0], "global - style (photo)"),
]
B = [q("b", 1, [0], "entity - whole (dog)"), q("b", 2, [1], "attribute - color (dog, blue)")]


def yes(*ids, n=4):
    return {i: ("yes" if i in ids else "no") for i in range(1, n + 1)}


def test_tile_score_yes_only_and_cascade():
    qs = group_questions(A)["a"]
    assert score_item(qs, [yes(1, 2, 3, 4)]).tile_scores == [1.0]
    # parent 1 fails: 2 and 3 zeroed; 4 stays
    assert score_item(qs, [yes(2, 3, 4)]).tile_scores == [0.25]
    # 2 fails: 3 (child of 2) zeroed
    assert score_item(qs, [yes(1, 3, 4)]).tile_scores == [0.5]
    # only exact "yes" counts
    assert score_item(qs, [{1: "Yes", 2: "yes ", 3: "yes", 4: "yes"}]).tile_scores == [0.25]


def test_cascade_follows_csv_order_in_place():
    # child listed before its parent: the official loop sees the parent's raw score, not its zeroed one
    qs = {
        3: q("c", 3, [2], "relation - x (a)"),
        1: q("c", 1, [0], "entity - whole (a)"),
        2: q("c", 2, [1], "attribute - color (a)"),
    }
    r = score_item(qs, [{1: "no", 2: "yes", 3: "yes"}])
    assert r.tile_scores == [pytest.approx(1 / 3)]  # 3 kept (parent 2 raw yes), 2 zeroed by 1


def test_image_is_mean_of_tiles_and_raw_kept_before_zeroing():
    qs = group_questions(A)["a"]
    r = score_item(qs, [yes(1, 2, 3, 4), yes(2, 3, 4), yes(), yes(1)])
    assert r.tile_scores == [1.0, 0.25, 0.0, 0.25]
    assert r.score == pytest.approx(1.5 / 4)
    assert r.raw[1] == {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}


def test_missing_answer_is_an_error():
    with pytest.raises(DataError, match="no answer for question 4"):
        score_item(group_questions(A)["a"], [{1: "yes", 2: "yes", 3: "yes"}])


def test_corrected_summary_golden():
    answers = {"a": [yes(1, 2, 3, 4), yes(2, 3, 4)], "b": [yes(1, n=2), yes(1, 2, n=2)]}
    s = summarize(A + B, answers, "corrected")
    # a: (1 + 0.25)/2 = 0.625; b: (0.5 + 1)/2 = 0.75 -> 68.75
    assert s["score"] == pytest.approx(68.75)
    assert s["dropped"] == []
    # categories from raw scores over all tiles: entity a:1,0 b:1,1 -> 75
    assert s["l1"]["entity"] == pytest.approx(75.0)
    assert s["l1"]["attribute"] == pytest.approx(100 * 3 / 4)  # a:1,1 b:0,1
    assert s["l2"]["relation - spatial"] == pytest.approx(100.0)  # raw, before zeroing
    assert s["l2"]["global - style"] == pytest.approx(100.0)
    m = summary_metrics(s, None, "dpg-shapes", "@1nfe")
    assert m["dpg-shapes/score@1nfe"] == pytest.approx(68.75)
    assert m["dpg-shapes/l2/entity-whole@1nfe"] == pytest.approx(75.0)


def test_official_rules_drop_first_row_and_use_last_tile_for_categories():
    answers = {"a": [yes(1, 2, 3, 4), yes(2, 3, 4)], "b": [yes(1, n=2), yes(1, 2, n=2)]}
    off = summarize(A + B, answers, "official")
    # first row (a/1) skipped; a/2 names parent 1 -> the official KeyError drops item a entirely
    assert off["dropped"] == ["a"] and off["n_images"] == 1
    assert off["score"] == pytest.approx(75.0)
    # categories from b's last tile only: entity 1, attribute 1
    assert off["l1"] == {"attribute": 100.0, "entity": 100.0}
    # when the first item's other questions do not depend on the first one, it stays with fewer questions
    flat = [q("a", 1, [0], "entity - whole (x)"), q("a", 2, [0], "entity - whole (y)"), *B]
    off2 = summarize(flat, {"a": [{1: "no", 2: "yes"}], "b": [yes(1, 2, n=2)]}, "official")
    assert off2["dropped"] == [] and off2["items"]["a"] == 1.0  # 1/2 with the first question
    cor2 = summarize(flat, {"a": [{1: "no", 2: "yes"}], "b": [yes(1, 2, n=2)]}, "corrected")
    assert cor2["items"]["a"] == 0.5
    both = summary_metrics(off2, cor2, "dpg")
    assert both["dpg/score"] == pytest.approx(100.0) and both["dpg/score_corrected"] == pytest.approx(75.0)


def test_official_restarts_non_contiguous_items_and_drops_unknown():
    rows = [
        q("z", 9, [0], "other - (z)"),
        q("a", 1, [0], "entity - whole (x)"),
        q("b", 1, [0], "entity - whole (y)"),
        q("a", 2, [0], "entity - whole (w)"),
    ]
    assert list(group_questions(rows, "official")["a"]) == [2]
    assert list(group_questions(rows, "corrected")["a"]) == [1, 2]
    off = summarize(rows, {"a": [{1: "yes", 2: "yes"}], "nope": [{}]}, "official")
    assert off["dropped"] == ["nope"]
    with pytest.raises(DataError, match="nope"):
        summarize(rows, {"nope": [{}]}, "corrected")


def test_csv_roundtrip_and_bad_rows(tmp_path):
    path = tmp_path / "dpg.csv"
    write_csv(A + B, path)
    assert read_csv(path) == [Question(**{**x.__dict__}) for x in A + B]
    path.write_text("item_id,proposition_id,dependency,tuple,question_natural_language\na,one,0,t,q\n")
    with pytest.raises(DataError, match=r"dpg.csv:2: bad DPG row"):
        read_csv(path)
    path.write_text("item_id,text\n")
    with pytest.raises(DataError, match="missing DPG columns"):
        read_csv(path)
    with pytest.raises(DataError, match="rules"):
        summarize(A, {}, "fixed")
