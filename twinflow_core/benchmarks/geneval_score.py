"""GenEval scoring rules as pure functions: detections in, correct/reason and summary numbers out.

Reproduces djghosh13/geneval `evaluation/evaluate_images.py` (per-image verdict) and
`evaluation/summary_scores.py` (per-tag means, overall, % correct images / prompts) with its defaults:
confidence > 0.3 (> 0.9 for the `counting` tag), at most 16 objects per class, NMS off, position
threshold 0.1. The same functions score the official detector's output and the embedded shapes detector's.

A detection's `color` is what the colour classifier says of that object (official: CLIP zero-shot on the
object crop); scoring only reads it for the objects a `color` clause looks at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from twinflow_core.errors import DataError

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
# The official colour classifier's labels, in its order: a failed colour clause's reason lists the colours seen in
# this order ("; and 1 red, 1 blue"). A colour outside the list (the shapes world's own) is appended after them.
OFFICIAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# The official detector's boxes and scores are float32 arrays, and numpy compares them with a Python threshold in
# float32; every threshold and position comparison here is made in float32 too, so boundary cases agree.
F32 = np.float32


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, box (x0, y0, x1, y1) in pixels, confidence, classified colour."""

    cls: str
    box: tuple[float, float, float, float]
    score: float
    color: str | None = None

    def to_json(self) -> dict:
        return {"class": self.cls, "box": [float(v) for v in self.box], "score": float(self.score), "color": self.color}


def select_objects(
    detections: Iterable[Detection],
    tag: str,
    *,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, list[Detection]]:
    """Keep, per class, detections with confidence strictly above the tag's threshold, most confident
    first, at most `max_objects`. Classes left with no detection are absent (as in the official dict)."""
    thr = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        if F32(det.score) > F32(thr):
            by_class.setdefault(det.cls, []).append(det)
    # Official: argsort of scores, reversed. Ties have no defined order there; here they keep input order.
    return {cls: sorted(dets, key=lambda d: -d.score)[:max_objects] for cls, dets in by_class.items()}


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], position_threshold: float = POSITION_THRESHOLD
) -> set[str]:
    """Relations of A relative to B. The centre offset is shrunk on each axis by
    threshold x (size_a + size_b) (so touching or overlapping objects need a clear offset), then divided by
    the *unshrunk* offset's length; a component beyond +-0.5 names the relation. Image y grows downwards."""
    boxes = np.asarray([box_a[:4], box_b[:4]], dtype=F32).reshape(2, 2, 2)  # [object, corner, (x, y)]
    centre_a, centre_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - F32(position_threshold) * (size_a + size_b), F32(0)) * np.sign(offset)
    if bool(np.all(np.abs(revised) < F32(1e-3))):
        return set()
    dx, dy = (revised / np.linalg.norm(offset)).tolist()
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def evaluate_objects(
    objects: Mapping[str, Sequence[Detection]], metadata: Mapping, position_threshold: float = POSITION_THRESHOLD
) -> tuple[bool, str]:
    """Official verdict for one image. `objects` comes from `select_objects` (sorted, thresholded).

    include groups are ANDed: the top-`count` objects of the class must exist; if `color` is given at
    least `count` of them must have it; if `position` [rel, k] is given (checked only when the colour
    passed) every (object, object of group k) pair must satisfy rel, and group k must itself have matched.
    exclude groups are ORed: `count` or more objects of the class fail the image.
    """
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], int(req["count"])
        matched = True
        found = list(objects.get(cls, []))[:count]
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                n_ok = colors.count(req["color"])
                if n_ok < count:
                    correct = matched = False
                    seen = [c for c in OFFICIAL_COLORS if c in colors]
                    seen += sorted({c for c in colors if c is not None} - set(OFFICIAL_COLORS))
                    reasons.append(
                        f"expected {req['color']} {cls}>={count}, found {n_ok} {req['color']}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in seen)
                    )
            if "position" in req and matched:
                rel, k = req["position"]
                # The official code indexes the groups already visited (a Python index, so -1 is the
                # previous group); anything else crashes it: here a one-line metadata error.
                if not -len(matched_groups) <= int(k) < len(matched_groups):
                    raise DataError(
                        f"GenEval metadata {metadata.get('prompt')!r}: position refers to "
                        f"include group {k}, which comes later"
                    )
                if matched_groups[k] is None:
                    correct = matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in found:
                        for target in matched_groups[k]:
                            rels = relative_position(obj.box, target.box, position_threshold)
                            if rel not in rels:
                                correct = matched = False
                                reasons.append(
                                    f"expected {cls} {rel} target, found {' and '.join(sorted(rels))} target"
                                )
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        n = len(objects.get(cls, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {n}")
    return correct, "\n".join(reasons)


def score_image(detections: Iterable[Detection], metadata: Mapping, **options) -> tuple[bool, str, dict]:
    """Threshold/limit the raw detections for the prompt's tag, then judge. Returns (correct, reason,
    kept objects by class) — the last is what the official `details` column records."""
    pos = options.pop("position_threshold", POSITION_THRESHOLD)
    objects = select_objects(detections, metadata["tag"], **options)
    correct, reason = evaluate_objects(objects, metadata, pos)
    return correct, reason, objects


def result_row(
    filename: str, metadata: Mapping, correct: bool, reason: str, objects: Mapping[str, Sequence[Detection]]
) -> dict:
    """One row of the official results.jsonl (metadata and details are JSON strings there)."""
    return {
        "filename": filename,
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": bool(correct),
        "reason": reason,
        "metadata": json.dumps(dict(metadata)),
        "details": json.dumps({c: [list(d.box) + [d.score] for d in ds] for c, ds in objects.items()}),
    }


def summarize(rows: Iterable[Mapping]) -> dict:
    """summary_scores.py on result rows (each needs `tag`, `correct`, `metadata`).

    Tags are reported in order of first appearance; overall is the unweighted mean of the tag means
    present; a prompt (grouped by its metadata string) is correct when any of its images is.
    """
    per_tag: dict[str, list[bool]] = {}
    per_prompt: dict[str, bool] = {}
    n = n_correct = 0
    for i, row in enumerate(rows):
        try:
            tag, ok, meta = row["tag"], row["correct"], row["metadata"]
        except (KeyError, TypeError) as err:
            raise DataError(f"GenEval result row {i}: missing field {err}") from None
        if not isinstance(ok, bool):
            raise DataError(f"GenEval result row {i}: 'correct' must be true/false, got {ok!r}")
        if not isinstance(meta, str):
            meta = json.dumps(meta)
        per_tag.setdefault(tag, []).append(ok)
        per_prompt[meta] = per_prompt.get(meta, False) or ok
        n += 1
        n_correct += ok
    if n == 0:
        raise DataError("GenEval results: no rows")
    tags = {t: {"score": sum(v) / len(v), "correct": int(sum(v)), "total": len(v)} for t, v in per_tag.items()}
    return {
        "total_images": n,
        "total_prompts": len(per_prompt),
        "correct_images": n_correct / n,
        "correct_prompts": sum(per_prompt.values()) / len(per_prompt),
        "tags": tags,
        "overall": sum(t["score"] for t in tags.values()) / len(tags),
    }


def summary_metrics(summary: Mapping, benchmark: str = "geneval", suffix: str = "") -> dict[str, float]:
    """Flatten a summary into project metric names: `<benchmark>/overall<suffix>`, `<benchmark>/<tag>...`."""
    out = {
        f"{benchmark}/overall{suffix}": float(summary["overall"]),
        f"{benchmark}/correct_images{suffix}": float(summary["correct_images"]),
        f"{benchmark}/correct_prompts{suffix}": float(summary["correct_prompts"]),
    }
    for tag, t in summary["tags"].items():
        out[f"{benchmark}/{tag}{suffix}"] = float(t["score"])
    return out
