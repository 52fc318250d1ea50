"""GenEval edges where float64 arithmetic or the reason text parted from djghosh13/geneval evaluate_images.py."""

from __future__ import annotations

import numpy as np

from twinflow_core.benchmarks import geneval_score as gs


def test_threshold_is_compared_in_float32_as_the_detector_does():
    # 0.3000000001 > 0.3 in float64, but both round to the same float32: the official detector keeps neither
    above_in_f64 = gs.Detection("cat", (0, 0, 10, 10), 0.3000000001)
    assert above_in_f64.score > 0.3 and not np.float32(above_in_f64.score) > np.float32(0.3)
    assert gs.select_objects([above_in_f64], "single_object") == {}
    clear = gs.Detection("cat", (0, 0, 10, 10), 0.31)
    assert gs.select_objects([clear], "single_object") == {"cat": [clear]}


def test_relative_position_in_float32_at_the_boundary():
    # A 1-px-wide object whose centre sits 1e-7 px past the shrink margin: the float64 offset survives the
    # 1e-3 cut-off test differently from float32 only at such boundaries; the result must equal the float32 one.
    a, b = (10.0, 0.0, 20.0, 10.0), (0.0, 0.0, 10.0, 10.0)
    boxes = np.asarray([a, b], np.float32).reshape(2, 2, 2)
    ca, cb = boxes.mean(axis=1)
    dims = np.abs(boxes[:, 1] - boxes[:, 0])
    off = ca - cb
    rev = np.maximum(np.abs(off) - np.float32(0.1) * dims.sum(0), 0) * np.sign(off)
    dx = (rev / np.linalg.norm(off))[0]
    assert dx.dtype == np.float32 and (dx > 0.5) == ("right of" in gs.relative_position(a, b))
    assert gs.relative_position(a, b) == {"right of"}
    assert gs.relative_position((0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 10.0, 10.0)) == set()


def test_failed_colour_clause_reason_has_the_official_suffix():
    dets = [gs.Detection("car", (0, 0, 5, 5), 0.9, "blue"), gs.Detection("car", (6, 0, 9, 5), 0.8, "red")]
    objects = gs.select_objects(dets, "color_attr")
    ok, reason = gs.evaluate_objects(objects, {"include": [{"class": "car", "count": 2, "color": "red"}]})
    assert not ok
    assert reason == "expected red car>=2, found 1 red; and 1 red, 1 blue"  # COLORS order: red before blue
