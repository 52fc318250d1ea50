"""GenEval scoring rules on canned detections: every clause of evaluate_images.py and summary_scores.py."""

import json

import pytest

from twinflow_core.benchmarks.geneval_score import (
    Detection,
    evaluate_objects,
    relative_position,
    score_image,
    select_objects,
    summarize,
    summary_metrics,
)
from twinflow_core.errors import DataError


def det(cls, box, score=0.95, color=None):
    return Detection(cls, tuple(float(v) for v in box), score, color)


# --- thresholds and limits -------------------------------------------------------------------------------


def test_threshold_is_strict_and_counting_uses_point_nine():
    dets = [
        det("dog", (0, 0, 1, 1), 0.3),
        det("dog", (0, 0, 1, 1), 0.31),
        det("dog", (0, 0, 1, 1), 0.9),
        det("dog", (0, 0, 1, 1), 0.95),
    ]
    assert [d.score for d in select_objects(dets, "single_object")["dog"]] == [0.95, 0.9, 0.31]
    assert [d.score for d in select_objects(dets, "counting")["dog"]] == [0.95]


def test_at_most_16_per_class_most_confident_first_and_empty_classes_absent():
    dets = [det("cat", (0, 0, 1, 1), 0.4 + i / 100) for i in range(20)] + [det("cow", (0, 0, 1, 1), 0.1)]
    kept = select_objects(dets, "two_object")
    assert len(kept["cat"]) == 16 and kept["cat"][0].score == pytest.approx(0.59)
    assert kept["cat"][-1].score == pytest.approx(0.44)
    assert "cow" not in kept
    assert len(select_objects(dets, "x", max_objects=3)["cat"]) == 3


# --- include: count ------------------------------------------------------------------------------------


def test_include_needs_top_count_objects():
    meta = {
        "tag": "counting",
        "include": [{"class": "apple", "count": 3}],
        "exclude": [{"class": "apple", "count": 4}],
        "prompt": "a photo of three apples",
    }
    three = [det("apple", (i * 10, 0, i * 10 + 5, 5), 0.95) for i in range(3)]
    assert score_image(three, meta)[0] is True
    ok, reason, _ = score_image(three[:2], meta)
    assert not ok and reason == "expected apple>=3, found 2"
    # a third apple at 0.8 counts for other tags but not for counting (0.9)
    low = three[:2] + [det("apple", (50, 0, 55, 5), 0.8)]
    assert score_image(low, meta)[0] is False
    assert score_image(low, {**meta, "tag": "two_object"})[0] is True


def test_exclude_fails_at_count_or_more():
    meta = {
        "tag": "counting",
        "include": [{"class": "apple", "count": 2}],
        "exclude": [{"class": "apple", "count": 3}],
        "prompt": "p",
    }
    three = [det("apple", (i * 10, 0, i * 10 + 5, 5)) for i in range(3)]
    ok, reason, _ = score_image(three, meta)
    assert not ok and reason == "expected apple<3, found 3"
    assert score_image(three[:2], meta)[0] is True
    # exclude counts what survived the threshold only
    assert score_image(three[:2] + [det("apple", (50, 0, 55, 5), 0.85)], meta)[0] is True


def test_extra_objects_of_other_classes_do_not_matter_without_exclude():
    meta = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}
    assert score_image([det("bench", (0, 0, 5, 5)), det("dog", (9, 9, 12, 12))], meta)[0] is True
    assert score_image([det("dog", (9, 9, 12, 12))], meta)[0] is False


# --- colour ----------------------------------------------------------------------------------------------


def test_color_checks_only_the_top_count_objects():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}], "prompt": "a pink car"}
    # the most confident car is red; a less confident pink one is not looked at
    dets = [det("car", (0, 0, 5, 5), 0.99, "red"), det("car", (10, 0, 15, 5), 0.9, "pink")]
    ok, reason, _ = score_image(dets, meta)
    assert not ok and reason.startswith("expected pink car>=1, found 0 pink")
    assert score_image([det("car", (0, 0, 5, 5), 0.99, "pink")], meta)[0] is True


def test_color_attr_two_groups_and_failed_group_blocks_position():
    meta = {
        "tag": "color_attr",
        "include": [{"class": "cup", "count": 1, "color": "red"}, {"class": "vase", "count": 1, "color": "blue"}],
        "prompt": "p",
    }
    good = [det("cup", (0, 0, 5, 5), color="red"), det("vase", (10, 0, 15, 5), color="blue")]
    swapped = [det("cup", (0, 0, 5, 5), color="blue"), det("vase", (10, 0, 15, 5), color="red")]
    assert score_image(good, meta)[0] is True
    ok, reason, _ = score_image(swapped, meta)
    assert not ok and reason.count("\n") == 1  # both groups report


# --- position --------------------------------------------------------------------------------------------


def test_relative_position_basic_directions_and_y_down():
    a, b = (60, 40, 80, 60), (20, 40, 40, 60)
    assert relative_position(a, b) == {"right of"}
    assert relative_position(b, a) == {"left of"}
    assert relative_position((40, 0, 60, 20), (40, 50, 60, 70)) == {"above"}
    assert relative_position((40, 50, 60, 70), (40, 0, 60, 20)) == {"below"}


def test_relative_position_shrink_golden():
    # centres 20 apart in x; sizes 10+10 -> shrink 0.1*20 = 2 -> revised 18/20 = 0.9 > 0.5
    assert relative_position((20, 0, 30, 10), (0, 0, 10, 10)) == {"right of"}
    # diagonal: offset (10, 10), widths 10+10 and heights 10+10 -> revised (8, 8)/14.14 = 0.566 each: both
    assert relative_position((10, 10, 20, 20), (0, 0, 10, 10)) == {"right of", "below"}
    # large objects: offset (10, 10), sizes 40+40 -> shrink 8 -> revised (2,2)/14.14 = 0.14: nothing
    assert relative_position((10, 10, 50, 50), (0, 0, 40, 40)) == set()
    # shrink kills y but not x: offset (30, 5) -> revised (28, 3)/30.4 = (0.92, 0.099)
    assert relative_position((30, 5, 40, 15), (0, 0, 10, 10)) == {"right of"}
    # position threshold 0 vs a huge one
    assert relative_position((12, 0, 22, 10), (0, 0, 10, 10), 0.0) == {"right of"}
    assert relative_position((12, 0, 22, 10), (0, 0, 10, 10), 1.0) == set()


def test_relative_position_same_centre_is_empty():
    assert relative_position((0, 0, 10, 10), (2, 2, 8, 8)) == set()


def test_position_every_pair_against_group_k():
    meta = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a cat right of a dog",
    }
    dog, cat_right, cat_left = det("dog", (0, 0, 10, 10)), det("cat", (30, 0, 40, 10)), det("cat", (-40, 0, -30, 10))
    assert score_image([dog, cat_right], meta)[0] is True
    ok, reason, _ = score_image([dog, cat_left], meta)
    assert not ok and reason == "expected cat right of target, found left of target"
    # the target group failed (no dog): "no target"
    ok, reason, _ = score_image([cat_right], meta)
    assert not ok and "no target for cat to be right of" in reason
    # group of two: every cat must be right of every dog
    meta2 = {
        "tag": "position",
        "include": [{"class": "dog", "count": 2}, {"class": "cat", "count": 1, "position": ["right of", 0]}],
        "prompt": "p",
    }
    dog2 = det("dog", (50, 0, 60, 10), 0.9)
    assert score_image([dog, dog2, cat_right], meta2)[0] is False
    assert score_image([dog, dog2, det("cat", (80, 0, 90, 10))], meta2)[0] is True


def test_position_not_checked_when_colour_failed():
    meta = {
        "tag": "position",
        "include": [
            {"class": "dog", "count": 1},
            {"class": "cat", "count": 1, "color": "red", "position": ["above", 0]},
        ],
        "prompt": "p",
    }
    ok, reason, _ = score_image([det("dog", (0, 0, 10, 10)), det("cat", (0, 50, 10, 60), color="blue")], meta)
    assert not ok and "found 0 red" in reason and "above" not in reason


def test_position_to_a_later_group_is_a_data_error():
    meta = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1, "position": ["above", 1]}, {"class": "dog", "count": 1}],
        "prompt": "bad",
    }
    with pytest.raises(DataError, match="include group 1"):
        evaluate_objects({"cat": [det("cat", (0, 0, 1, 1))], "dog": [det("dog", (0, 5, 1, 6))]}, meta)


# --- summary ---------------------------------------------------------------------------------------------


def _rows(spec):
    rows = []
    for p, (tag, verdicts) in enumerate(spec):
        meta = json.dumps({"tag": tag, "prompt": f"prompt {p}"})
        rows += [{"tag": tag, "correct": v, "metadata": meta} for v in verdicts]
    return rows


def test_summary_overall_is_unweighted_mean_of_tags():
    rows = _rows(
        [
            ("single_object", [True] * 4),
            ("single_object", [True, True, True, False]),
            ("counting", [False] * 4),
            ("position", [True, False, False, False]),
        ]
    )
    s = summarize(rows)
    assert s["tags"]["single_object"]["score"] == pytest.approx(7 / 8)
    assert s["tags"]["counting"]["score"] == 0.0
    assert s["tags"]["position"]["score"] == pytest.approx(0.25)
    assert s["overall"] == pytest.approx((7 / 8 + 0 + 0.25) / 3)  # not 8/16 (image-weighted)
    assert s["correct_images"] == pytest.approx(8 / 16)
    assert s["correct_prompts"] == pytest.approx(3 / 4)
    assert list(s["tags"]) == ["single_object", "counting", "position"]  # order of first appearance
    m = summary_metrics(s, "geneval-shapes", "@1nfe")
    assert m["geneval-shapes/overall@1nfe"] == pytest.approx(0.375)
    assert m["geneval-shapes/position@1nfe"] == pytest.approx(0.25)


def test_summary_rejects_bad_rows():
    with pytest.raises(DataError, match="row 0"):
        summarize([{"tag": "x", "correct": "yes", "metadata": "{}"}])
    with pytest.raises(DataError, match="no rows"):
        summarize([])
