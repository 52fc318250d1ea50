"""The shapes world: determinism, scenes that match their captions, relations that pass GenEval's rule,
classes that stay apart at 24 px, and training captions held out from the evaluation prompts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from twinflow_core.data import shapes
from twinflow_core.data.prompt_sets import load_dpg_items, load_geneval_metadata, load_holdout
from twinflow_core.data.shapes import CLASSES, COLORS, PLURAL, shapes_sample
from twinflow_core.data.vocab import split_words
from twinflow_core.errors import ConfigError, DataError

PROMPTS = "data/prompts"
NUMBERS = {"two": 2, "three": 3, "four": 4}


def geneval_relations(box_a, box_b) -> set[str]:
    """GenEval's relative_position (evaluate_images.py, threshold 0.1), written out independently here."""
    a, b = np.array(box_a, float), np.array(box_b, float)
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    dim = (a[2:] - a[:2]) + (b[2:] - b[:2])
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - 0.1 * dim, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.fixture(scope="module")
def holdout():
    return load_holdout(PROMPTS)


@pytest.fixture(scope="module")
def samples(holdout):
    return [shapes_sample(i, 32, 0, holdout) for i in range(600)]


def test_same_seed_same_bytes_other_seed_other_images():
    a = [shapes_sample(i, 32, 5) for i in range(20)]
    b = [shapes_sample(i, 32, 5) for i in range(20)]
    c = [shapes_sample(i, 32, 6) for i in range(20)]
    assert all(
        x.image.tobytes() == y.image.tobytes() and x.caption == y.caption and x.scene == y.scene for x, y in zip(a, b)
    )
    assert sum(x.image.tobytes() != z.image.tobytes() for x, z in zip(a, c)) == 20


def test_render_is_a_pure_function_of_the_scene(samples):
    for s in samples[:30]:
        assert np.array_equal(shapes.render_scene(json.loads(json.dumps(s.scene))), s.image)


def test_scenes_are_well_formed(samples):
    for s in samples:
        sc = s.scene
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert sc["width"] == sc["height"] == 32
        assert 1 <= len(sc["objects"]) <= 4
        for o in sc["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            assert x1 - x0 >= 0.27 * 32 * 0.93**3 - 1e-6  # objects stay legible even after shrinking
            assert o["class"] in CLASSES and o["color"] in COLORS
        boxes = [o["box"] for o in sc["objects"]]
        assert not any(overlaps(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))


def test_every_asserted_relation_passes_geneval_rule_and_only_that_one(samples):
    checked = 0
    for s in samples:
        objs = s.scene["objects"]
        for i, rel, j in s.scene["relations"]:
            assert geneval_relations(objs[i]["box"], objs[j]["box"]) == {rel}, s.caption
            checked += 1
    assert checked > 50


def test_captions_describe_their_scene(samples):
    kinds = {s.kind for s in samples}
    assert kinds == set(shapes.KINDS)
    for s in samples:
        objs = s.scene["objects"]
        classes = [o["class"] for o in objs]
        body = re.sub(r"^(a photo of|a picture of|an image of) ", "", s.caption)
        if s.kind == "single_object":
            assert body == f"a {classes[0]}" and len(objs) == 1
        elif s.kind == "colors":
            assert body == f"a {objs[0]['color']} {classes[0]}" and len(objs) == 1
        elif s.kind == "counting":
            n = NUMBERS[body.split()[0]]
            assert len(objs) == n and body.endswith(PLURAL[classes[0]]) and len(set(classes)) == 1
        elif s.kind in ("two_object", "color_attr"):
            assert len(objs) == 2 and classes[0] != classes[1]
            phrase = " and ".join(f"a {o['color'] + ' ' if s.kind == 'color_attr' else ''}{o['class']}" for o in objs)
            assert body == phrase
        elif s.kind == "position":
            ((i, rel, j),) = s.scene["relations"]
            assert f" {rel} " in body and body.split(f" {rel} ")[0].endswith(classes[i])
            assert body.endswith(classes[j])
        else:  # dense: every object is named with its colour, and the relations are sentences
            for o in objs:
                assert f"{o['color']} {o['class']}" in body or f"{o['color']} {PLURAL[o['class']]}" in body
            assert body.count(" is ") == len(s.scene["relations"])


def test_training_never_emits_an_evaluation_prompt_nor_a_held_out_colour_pair(samples, holdout):
    assert len(holdout.prompts) == 132 + 64 and len(holdout.pairs) == 40
    captions = {shapes.normalise_prompt(s.caption) for s in samples}
    assert not captions & holdout.prompts
    for s in samples:
        objs = [(o["color"], o["class"]) for o in s.scene["objects"]]
        assert not holdout.blocks(objs), s.caption
    # Without the holdout the same generator does produce evaluation prompts (so the check above can fail).
    free = {shapes.normalise_prompt(shapes_sample(i, 32, 0).caption) for i in range(600)}
    assert free & holdout.prompts


def test_vocabulary_is_closed_and_covers_every_evaluation_prompt(samples):
    vocab = set(shapes.vocabulary())
    assert len(vocab) == 30
    for s in samples:
        assert set(split_words(s.caption)) <= vocab
    for row in load_geneval_metadata(PROMPTS):
        assert set(split_words(row["prompt"])) <= vocab, row["prompt"]
    for item in load_dpg_items(PROMPTS):
        assert set(split_words(item["text"])) <= vocab, item["text"]


def test_word_rule_matches_the_training_tokenizer(samples):
    text = pytest.importorskip("twinflow_core.text")
    for s in samples[:100]:
        assert split_words(s.caption) == text.split_words(s.caption)


def _geneval_correct(row: dict, scene: dict) -> bool:
    """GenEval's include/exclude/colour/position rules applied to ground-truth objects."""
    objs = scene["objects"]
    found = []
    for g in row["include"]:
        of_class = [o for o in objs if o["class"] == g["class"]]
        if len(of_class) < g["count"]:
            return False
        if "color" in g and sum(o["color"] == g["color"] for o in of_class) < g["count"]:
            return False
        found.append(of_class)
    for k, g in enumerate(row["include"]):
        if "position" in g:
            rel, ref = g["position"]
            if not all(rel in geneval_relations(a["box"], b["box"]) for a in found[k] for b in found[ref]):
                return False
    for g in row.get("exclude", []):
        if sum(o["class"] == g["class"] for o in objs) >= g["count"]:
            return False
    return True


@pytest.mark.parametrize("size", [24, 32])
def test_renders_for_geneval_prompts_satisfy_them(size):
    rows = load_geneval_metadata(PROMPTS)
    for seed in range(2):
        for row in rows:
            image, scene = shapes.render_geneval(row, seed, size)
            assert image.shape == (size, size, 3)
            assert _geneval_correct(row, scene), (row["prompt"], scene)
    # ... and a render for one prompt generally fails another's (the check is not vacuous).
    image, scene = shapes.render_geneval(rows[0], 0, size)
    assert sum(_geneval_correct(r, scene) for r in rows) < len(rows) / 4


def test_renders_for_dpg_items_satisfy_their_groups_and_relations():
    for item in load_dpg_items(PROMPTS):
        image, scene = shapes.render_dpg(item, 0, 24)
        objs = scene["objects"]
        for g in item["groups"]:
            same = [o for o in objs if o["class"] == g["class"]]
            assert len(same) == g["count"] and all(o["color"] == g["color"] for o in same)
        assert len(scene["relations"]) == len(item["relations"])
        for i, rel, j in scene["relations"]:
            assert rel in geneval_relations(objs[i]["box"], objs[j]["box"])


def test_classes_stay_apart_at_24_pixels():
    """At the smallest object size, two classes drawn in the same box differ in >= 18% of their (soft) mask."""

    def mask(cls, box):
        scene = {
            "objects": [{"class": cls, "color": "white", "box": box, "rgb": [255, 255, 255]}],
            "width": 24,
            "height": 24,
            "background": [0, 0, 0],
        }
        return shapes.render_scene(scene)[..., 0] / 255.0

    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(40):
        side = rng.uniform(0.27 * 0.93**3, 0.56) * 24
        x0, y0 = rng.uniform(1, 23 - side, size=2)
        box = [x0, y0, x0 + side, y0 + side]
        masks = {c: mask(c, box) for c in CLASSES}
        for i, a in enumerate(CLASSES):
            for b in CLASSES[i + 1 :]:
                iou = np.minimum(masks[a], masks[b]).sum() / np.maximum(masks[a], masks[b]).sum()
                worst = max(worst, iou)
    assert worst < 0.82


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown caption kinds"):
        shapes.mix_table({"sparkles": 1.0})
    with pytest.raises(ConfigError, match="image_size must be >= 16"):
        shapes_sample(0, 8, 0)
    with pytest.raises(DataError, match="unknown class 'dog'"):
        shapes.render_geneval({"include": [{"class": "dog", "count": 1}]}, 0, 32)
    with pytest.raises(DataError, match="malformed"):
        shapes.render_geneval({"tag": "single_object"}, 0, 32)
