"""The shapes perception backend: components on renders, the committed crop classifier, DPG answers."""

from pathlib import Path

import numpy as np
import pytest

from twinflow_core.benchmarks.geneval_score import Detection
from twinflow_core.benchmarks.shapes_detector import ShapesDetector, answer_item, answer_question, components
from twinflow_core.data import shapes
from twinflow_core.errors import DataError

ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "evaluators" / "shapes-detector"


def _renders(n, seed=4242):
    return list(shapes.shapes_samples(n, 32, seed))


def test_components_match_ground_truth_on_renders():
    for s in _renders(40):
        comps = components(s.image)
        objs = s.scene["objects"]
        assert sorted(c.color for c in comps) == sorted(o["color"] for o in objs), s.caption
        for o in objs:
            near = [c for c in comps if c.color == o["color"] and np.abs(np.subtract(c.box, o["box"])).max() <= 1.5]
            assert near, (s.caption, o, [c.box for c in comps])


def test_background_only_and_bad_shape():
    flat = np.full((32, 32, 3), 56, np.uint8)
    assert components(flat) == []
    with pytest.raises(DataError, match="expected an"):
        components(np.zeros((32, 32), np.uint8))


@pytest.fixture(scope="module")
def detector():
    return ShapesDetector.load(ARTIFACT)


def test_detector_reads_renders(detector):
    samples = _renders(60, seed=99)
    dets = detector.detect_many(np.stack([s.image for s in samples]))
    n_obj = n_ok = 0
    for s, d in zip(samples, dets):
        truth = sorted((o["class"], o["color"]) for o in s.scene["objects"])
        got = sorted((x.cls, x.color) for x in d if x.score > 0.9)
        n_obj += 1
        n_ok += truth == got
    assert n_ok / n_obj >= 0.95


def test_blurry_conditional_mean_is_not_confident(detector):
    spec = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}], "prompt": "p"}
    mean = np.mean([shapes.render_geneval(spec, s, 32)[0] for s in range(16)], axis=0).round().astype(np.uint8)
    assert all(d.score < 0.3 for d in detector.detect(mean))
    sharp = shapes.render_geneval(spec, 3, 32)[0]
    top = detector.detect(sharp)[0]
    assert (top.cls, top.color) == ("square", "red") and top.score > 0.9


def D(cls, color, box, score=0.95):
    return Detection(cls, box, score, color)


def test_answers_for_every_question_kind():
    dets = [
        D("circle", "red", (0, 0, 10, 10)),
        D("square", "blue", (20, 0, 30, 10)),
        D("triangle", "green", (0, 20, 10, 30)),
        D("triangle", "green", (20, 20, 30, 30)),
        D("cross", "white", (12, 12, 18, 18), score=0.2),
    ]
    assert answer_question("entity - whole (circle)", dets) == "yes"
    assert answer_question("entity - whole (cross)", dets) == "no"  # below the 0.3 threshold
    assert answer_question("entity - whole (triangles)", dets) == "yes"
    assert answer_question("other - count (triangles, ==2)", dets) == "yes"
    assert answer_question("other - count (triangles, ==3)", dets) == "no"
    assert answer_question("attribute - color (circle, red)", dets) == "yes"
    assert answer_question("attribute - color (circle, blue)", dets) == "no"
    assert answer_question("attribute - color (triangles, green)", dets) == "yes"
    mixed = dets[:3] + [D("triangle", "red", (20, 20, 30, 30))]
    assert answer_question("attribute - color (triangles, green)", mixed) == "no"  # plural: all of them
    assert answer_question("relation - spatial (square, circle, right of)", dets) == "yes"
    assert answer_question("relation - spatial (circle, square, right of)", dets) == "no"
    assert answer_question("relation - spatial (circle, cross, left of)", dets) == "no"  # no cross
    # colour-bound phrases (what dpg-shapes asks): only objects of that colour count
    assert answer_question("other - count (green triangles, ==2)", dets) == "yes"
    assert answer_question("other - count (red triangles, ==2)", mixed) == "no"
    assert answer_question("other - count (red triangles, ==1)", mixed) == "yes"
    assert answer_question("relation - spatial (blue square, red circle, right of)", dets) == "yes"
    assert answer_question("relation - spatial (blue square, green circle, right of)", dets) == "no"  # no green circle
    with pytest.raises(DataError, match="cannot read"):
        answer_question("entity whole circle", dets)
    with pytest.raises(DataError, match="no answerer"):
        answer_question("global - style (photo)", dets)


def test_answer_item_on_the_committed_question_file():
    from twinflow_core.benchmarks.dpg_score import group_questions, read_csv

    root = Path(__file__).resolve().parents[1] / "data" / "prompts" / "dpg-shapes"
    grouped = group_questions(read_csv(root / "dpg_bench.csv"))
    answers = answer_item(grouped["shapes-000"], [])
    assert set(answers.values()) == {"no"} and len(answers) == len(grouped["shapes-000"])
