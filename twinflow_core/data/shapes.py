"""The shapes world: coloured geometric objects on a plain background, captioned, deterministic from a seed.

A scene is 1-4 objects (classes `CLASSES`, colours `COLORS` named with GenEval's colour names) placed without
overlap; captions name objects, colours, counts and the relations left of / right of / above / below, in the
families of GenEval's six tags plus dense DPG-style descriptions. Each sample carries its scene dict
(the ground truth the benchmarks score against):

    {"objects": [{"class": "circle", "color": "red", "box": [x0, y0, x1, y1], "rgb": [r, g, b]}, ...],
     "width": W, "height": H, "background": [r, g, b], "relations": [[i, "left of", j], ...]}

Boxes are tight, in output pixels (floats); `relations` lists the object pairs the caption asserts
(object i is `rel` object j). Rendering is numpy + Pillow at 4x supersampling, box-filtered down, so edges
are anti-aliased and classes stay distinguishable at 24x24 (objects are at least ~27% of the image side).

Placement makes every asserted relation hold under GenEval's rule (centre offset shrunk by 0.1 x the summed
box sizes, normalised) with a margin: the main axis component beyond 0.7 (GenEval needs 0.5) and the other
axis below 0.4, so a render satisfies exactly the relation its caption names (and no second one).

Sample i of a dataset depends only on (seed, i): `np.random.default_rng([seed, i])`.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from twinflow_core.data.sample import Sample
from twinflow_core.data.vocab import split_words
from twinflow_core.errors import ConfigError, DataError
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
# Six of GenEval's ten colour names, picked to be far apart in RGB and from the dark grey background.
COLORS = {
    "red": (220, 40, 40),
    "yellow": (235, 210, 40),
    "green": (40, 170, 70),
    "blue": (50, 100, 235),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
BACKGROUND = (56, 56, 56)
RELATIONS = ("left of", "right of", "above", "below")
HORIZONTAL, VERTICAL = RELATIONS[:2], RELATIONS[2:]
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = 4

EVAL_PREFIX = "a photo of"  # GenEval's template; evaluation prompts use only this prefix
TRAIN_PREFIXES = ("a photo of", "a picture of", "an image of")

KINDS = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "dense")
DEFAULT_MIX = {
    "single_object": 0.10, "two_object": 0.10, "counting": 0.15, "colors": 0.15,
    "position": 0.15, "color_attr": 0.15, "dense": 0.20,
}

# Object size (side of its box) as a fraction of the image side, by number of objects in the scene.
SIZE_RANGE = {1: (0.38, 0.56), 2: (0.30, 0.42), 3: (0.28, 0.36), 4: (0.27, 0.33)}
COLOR_JITTER = 12       # +- per channel, so a colour is a small cloud, not one RGB value
BACKGROUND_JITTER = 6
SUPERSAMPLE = 4
CROSS_BAR = 0.36        # bar thickness of a cross, as a fraction of its box
REL_MARGIN = 0.2        # relations hold with this margin beyond GenEval's 0.5 threshold


@dataclass(frozen=True)
class Group:
    """`count` objects of one class named together; color None means each object gets a random colour."""

    cls: str
    color: str | None = None
    count: int = 1


@dataclass
class SceneSpec:
    """What a caption asserts: groups of objects and relations (group a, rel, group b) between them."""

    groups: list[Group]
    relations: list[tuple[int, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Holdout:
    """What training captions must never show: exact evaluation prompts, and (colour, class) pairs that the
    color_attr evaluation prompts combine (never two such objects in one training scene)."""

    prompts: frozenset = frozenset()
    pairs: frozenset = frozenset()

    def blocks(self, colored_objects: list[tuple[str, str]]) -> bool:
        """Whether objects [(colour, class)] include a held-out pair (of two different classes)."""
        for i, a in enumerate(colored_objects):
            for b in colored_objects[i + 1:]:
                if a[1] != b[1] and frozenset((a, b)) in self.pairs:
                    return True
        return False


def normalise_prompt(text: str) -> str:
    """The form prompts are compared in: lower case, single spaces."""
    return " ".join(text.lower().split())


def vocabulary() -> list[str]:
    """Every word the shapes captions (training and evaluation) can use, sorted."""
    counts = [NUMBER_WORDS[k] for k in range(2, MAX_OBJECTS + 1)]  # one object is "a", never "one"
    pieces = list(TRAIN_PREFIXES) + ["and the is"] + counts + list(COLORS)
    pieces += list(CLASSES) + list(PLURAL.values()) + list(RELATIONS)
    return sorted({w for p in pieces for w in split_words(p)})


# ---------------------------------------------------------------- captions


def noun_phrase(group: Group, with_color: bool = True) -> str:
    color = f"{group.color} " if (with_color and group.color) else ""
    if group.count == 1:
        return f"a {color}{group.cls}"
    return f"{NUMBER_WORDS[group.count]} {color}{PLURAL[group.cls]}"


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_for(kind: str, spec: SceneSpec, prefix: str = EVAL_PREFIX) -> str:
    """The caption of `spec` in the family `kind` (GenEval's wording for its six tags)."""
    g = spec.groups
    if kind in ("single_object", "colors", "counting"):
        return f"{prefix} {noun_phrase(g[0])}"
    if kind in ("two_object", "color_attr"):
        return f"{prefix} {noun_phrase(g[0])} and {noun_phrase(g[1])}"
    if kind == "position":
        a, rel, b = spec.relations[0]
        return f"{prefix} {noun_phrase(g[a])} {rel} {noun_phrase(g[b])}"
    if kind == "dense":
        text = f"{prefix} {_join([noun_phrase(x) for x in g])}."
        for a, rel, b in spec.relations:
            text += f" the {g[a].color} {g[a].cls} is {rel} the {g[b].color} {g[b].cls}."
        return text
    raise ConfigError(f"unknown shapes caption kind {kind!r}; expected one of {KINDS}")


# ---------------------------------------------------------------- scene specs (what a caption asserts)


def _pick(rng: np.random.Generator, items, k: int = 1) -> list:
    """k distinct items, uniformly."""
    if k == 1:  # the common case, without choice()'s permutation cost
        return [items[int(rng.integers(len(items)))]]
    idx = rng.choice(len(items), size=k, replace=False)
    return [items[int(i)] for i in idx]


def sample_spec(kind: str, rng: np.random.Generator) -> SceneSpec:
    """A random scene spec of caption family `kind`."""
    colors = list(COLORS)
    if kind == "single_object":
        return SceneSpec([Group(_pick(rng, CLASSES)[0])])
    if kind == "colors":
        return SceneSpec([Group(_pick(rng, CLASSES)[0], _pick(rng, colors)[0])])
    if kind == "two_object":
        a, b = _pick(rng, CLASSES, 2)
        return SceneSpec([Group(a), Group(b)])
    if kind == "color_attr":
        a, b = _pick(rng, CLASSES, 2)
        ca, cb = _pick(rng, colors, 2)
        return SceneSpec([Group(a, ca), Group(b, cb)])
    if kind == "position":
        a, b = _pick(rng, CLASSES, 2)
        ca, cb = _pick(rng, colors, 2) if rng.random() < 0.5 else (None, None)
        rel = _pick(rng, RELATIONS)[0]
        # GenEval order: group 0 is the reference (B), group 1 is placed relative to it (A rel B).
        return SceneSpec([Group(b, cb), Group(a, ca)], [(1, rel, 0)])
    if kind == "counting":
        cls = _pick(rng, CLASSES)[0]
        n = int(rng.integers(2, MAX_OBJECTS + 1))
        color = _pick(rng, colors)[0] if rng.random() < 0.5 else None
        return SceneSpec([Group(cls, color, n)])
    if kind == "dense":
        return sample_dense_spec(rng)
    raise ConfigError(f"unknown shapes caption kind {kind!r}; expected one of {KINDS}")


def sample_dense_spec(rng: np.random.Generator, min_groups: int = 2, min_relations: int = 0) -> SceneSpec:
    """2-4 groups of distinct classes, every group coloured, total <= 4 objects, up to 2 relations
    between single objects (so "the red circle" names exactly one object)."""
    n_groups = int(rng.integers(min_groups, MAX_OBJECTS + 1))
    classes = _pick(rng, CLASSES, n_groups)
    counts = [1] * n_groups
    for _ in range(int(rng.integers(0, MAX_OBJECTS - n_groups + 1))):
        counts[int(rng.integers(n_groups))] += 1
    groups = [Group(c, _pick(rng, list(COLORS))[0], k) for c, k in zip(classes, counts)]
    singles = [i for i, k in enumerate(counts) if k == 1]
    pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1:]]
    max_rel = min(2, len(pairs))
    n_rel = int(rng.integers(min(min_relations, max_rel), max_rel + 1)) if pairs else 0
    relations = []
    for a, b in _pick(rng, pairs, n_rel) if n_rel else []:
        if rng.random() < 0.5:
            a, b = b, a
        rels = RELATIONS
        if relations and {a, b} & {relations[0][0], relations[0][2]}:
            # Two relations sharing an object go on different axes: a chain of three objects in one
            # column does not fit the image at these object sizes.
            rels = HORIZONTAL if relations[0][1] in VERTICAL else VERTICAL
        relations.append((a, _pick(rng, rels)[0], b))
    return SceneSpec(groups, relations)


# ---------------------------------------------------------------- geometry


def relation_offsets(box_a, box_b) -> tuple[float, float]:
    """GenEval's normalised, size-shrunk centre offset (dx, dy) of box a relative to box b."""
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    ox, oy = ax - bx, ay - by
    norm = math.hypot(ox, oy)
    if norm < 1e-9:
        return 0.0, 0.0
    wsum = (box_a[2] - box_a[0]) + (box_b[2] - box_b[0])
    hsum = (box_a[3] - box_a[1]) + (box_b[3] - box_b[1])
    rx = math.copysign(max(abs(ox) - 0.1 * wsum, 0.0), ox)
    ry = math.copysign(max(abs(oy) - 0.1 * hsum, 0.0), oy)
    return rx / norm, ry / norm


def relation_holds(box_a, box_b, rel: str, margin: float = REL_MARGIN) -> bool:
    """Box a is `rel` box b, and only that, with `margin` beyond GenEval's 0.5 threshold."""
    dx, dy = relation_offsets(box_a, box_b)
    main, other = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
    return main > 0.5 + margin and abs(other) < 0.5 - margin / 2


_DIRECTION = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}


def _place_one(k, sizes, relations, centres, boxes, width, gap, edge, rng, tries: int = 30):
    """A box for object k that overlaps none of `boxes` and sits on the named side of a placed partner."""
    s = sizes[k]
    lo, hi = edge + s / 2, width - edge - s / 2
    anchor = None
    for i, rel, j in relations:
        if i == k and j in centres:
            anchor, (ux, uy) = j, _DIRECTION[rel]
        elif j == k and i in centres:
            anchor, (ux, uy) = i, tuple(-v for v in _DIRECTION[rel])
        if anchor is not None:
            break
    for _ in range(tries):
        if anchor is None:
            cx, cy = lo + rng.random() * (hi - lo), lo + rng.random() * (hi - lo)
        else:
            ax, ay = centres[anchor]
            near = (s + sizes[anchor]) / 2 + gap
            a_main, a_perp = (ax, ay) if ux else (ay, ax)
            # The main-axis coordinate on the named side; the other axis stays near the anchor's.
            m_lo, m_hi = (a_main + near, hi) if (ux or uy) > 0 else (lo, a_main - near)
            if m_lo > m_hi:
                return None
            main = m_lo + rng.random() * (m_hi - m_lo)
            perp = a_perp + (rng.random() * 2 - 1) * 0.25 * abs(main - a_main)
            perp = min(max(perp, lo), hi)
            cx, cy = (main, perp) if ux else (perp, main)
        box = [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]
        if not any(box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap
                   for b in boxes):
            return box
    return None


def _place(sizes: list[float], relations: list[tuple[int, str, int]], width: int,
           rng: np.random.Generator) -> list[list[float]]:
    """Non-overlapping square boxes of the given sides (px) satisfying every (i, rel, j).

    Objects are placed one by one; an object related to one already placed is put on the named side of it
    (close to its axis), others anywhere. A failed layout is redrawn; the objects shrink a little when
    layouts keep failing."""
    gap = max(1.0, 0.04 * width)
    edge = max(1.0, 0.03 * width)
    n = len(sizes)
    sizes = list(sizes)
    for attempt in range(400):
        if attempt and attempt % 40 == 0 and attempt <= 120:
            sizes = [s * 0.93 for s in sizes]
        centres: dict[int, tuple[float, float]] = {}
        boxes: list[list[float]] = []
        for k in range(n):
            box = _place_one(k, sizes, relations, centres, boxes, width, gap, edge, rng)
            if box is None:
                break
            boxes.append(box)
            centres[k] = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        else:
            if all(relation_holds(boxes[i], boxes[j], rel) for i, rel, j in relations):
                return boxes
    raise DataError(f"shapes: could not place {n} objects with relations {relations} in {width}x{width}")


# ---------------------------------------------------------------- scenes and rendering


def _jitter(rgb, amount: int, rng: np.random.Generator) -> list[int]:
    noise = rng.integers(-amount, amount + 1, size=3)
    return [int(min(255, max(0, c + d))) for c, d in zip(rgb, noise)]


def _objects_of(spec: SceneSpec, rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[tuple[int, str, int]]]:
    """Expand groups into (class, colour) objects (random colours where unnamed) and group relations
    into object relations (every object of group a vs every object of group b, as GenEval checks)."""
    objects, first = [], []
    for g in spec.groups:
        first.append(len(objects))
        for _ in range(g.count):
            objects.append((g.cls, g.color or _pick(rng, list(COLORS))[0]))
    relations = []
    for a, rel, b in spec.relations:
        for i in range(first[a], first[a] + spec.groups[a].count):
            for j in range(first[b], first[b] + spec.groups[b].count):
                relations.append((i, rel, j))
    return objects, relations


def build_scene(objects: list[tuple[str, str]], relations: list[tuple[int, str, int]], size: int,
                rng: np.random.Generator) -> dict:
    """Place and colour `objects` [(class, colour)] into a scene dict of `size` x `size` pixels."""
    if size < 16:
        raise ConfigError(f"shapes: image_size must be >= 16 to keep objects recognisable, got {size}")
    n = len(objects)
    if not 1 <= n <= MAX_OBJECTS:
        raise DataError(f"shapes: a scene holds 1-{MAX_OBJECTS} objects, got {n}")
    for cls, color in objects:
        if cls not in CLASSES:
            raise DataError(f"shapes: unknown class {cls!r}; the world has {CLASSES}")
        if color not in COLORS:
            raise DataError(f"shapes: unknown colour {color!r}; the world has {tuple(COLORS)}")
    lo, hi = SIZE_RANGE[n]
    sizes = [float(rng.uniform(lo, hi)) * size for _ in range(n)]
    boxes = _place(sizes, relations, size, rng)
    grey = int(rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1))  # stays neutral grey
    background = [c + grey for c in BACKGROUND]
    return {
        "objects": [
            {"class": cls, "color": color, "box": [round(v, 3) for v in box],
             "rgb": _jitter(COLORS[color], COLOR_JITTER, rng)}
            for (cls, color), box in zip(objects, boxes)
        ],
        "width": size,
        "height": size,
        "background": background,
        "relations": [[i, rel, j] for i, rel, j in relations],
    }


def render_scene(scene: dict) -> np.ndarray:
    """uint8 (H, W, 3) image of a scene dict (a pure function of the dict)."""

    ss = SUPERSAMPLE
    w, h = int(scene["width"]), int(scene["height"])
    canvas = Image.new("RGB", (w * ss, h * ss), tuple(scene.get("background", BACKGROUND)))
    draw = ImageDraw.Draw(canvas)
    for obj in scene["objects"]:
        x0, y0, x1, y1 = (v * ss for v in obj["box"])
        fill = tuple(obj.get("rgb", COLORS[obj["color"]]))
        cls = obj["class"]
        # Pillow's rectangle/ellipse include their far edge, hence the -1 for a tight box.
        if cls == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif cls == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif cls == "triangle":
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
        elif cls == "cross":
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            t = CROSS_BAR * (x1 - x0) / 2
            draw.rectangle([cx - t, y0, cx + t - 1, y1 - 1], fill=fill)
            draw.rectangle([x0, cy - t, x1 - 1, cy + t - 1], fill=fill)
        else:
            raise DataError(f"shapes: cannot render unknown class {cls!r}")
    return np.asarray(canvas.resize((w, h), Image.BOX), dtype=np.uint8)


# ---------------------------------------------------------------- the training set


def mix_table(mix: dict | None) -> tuple[tuple[str, ...], np.ndarray]:
    """(kinds, cumulative probabilities) of a caption-kind mixture, validated."""
    mix = DEFAULT_MIX if mix is None else mix
    unknown = sorted(set(mix) - set(KINDS))
    if unknown:
        raise ConfigError(f"data.shapes.mix: unknown caption kinds {unknown}; expected some of {KINDS}")
    try:
        items = [(k, float(v)) for k, v in mix.items()]
    except (TypeError, ValueError):
        raise ConfigError(f"data.shapes.mix: weights must be numbers, got {mix!r}") from None
    if any(v < 0 for _, v in items) or sum(v for _, v in items) <= 0:
        raise ConfigError(f"data.shapes.mix: weights must be >= 0 with a positive total, got {mix!r}")
    items = [(k, v) for k, v in items if v > 0]
    weights = np.array([v for _, v in items])
    return tuple(k for k, _ in items), np.cumsum(weights / weights.sum())


def shapes_sample(index: int, size: int, seed: int, holdout: Holdout | None = None,
                  mix: dict | None = None, _table=None) -> Sample:
    """Sample `index` of the shapes training set (depends only on seed, index and the arguments)."""
    holdout = holdout or Holdout()
    kinds, cum = _table or mix_table(mix)
    rng = np.random.default_rng([seed, index])
    kind = kinds[min(int(np.searchsorted(cum, rng.random(), side="right")), len(kinds) - 1)]
    for _ in range(200):
        spec = sample_spec(kind, rng)
        objects, relations = _objects_of(spec, rng)
        if not holdout.blocks([(color, cls) for cls, color in objects]):
            break
    else:
        raise DataError(f"shapes: sample {index}: the holdout blocks every {kind} scene tried")
    start = int(rng.integers(len(TRAIN_PREFIXES)))
    for k in range(len(TRAIN_PREFIXES)):
        caption = caption_for(kind, spec, TRAIN_PREFIXES[(start + k) % len(TRAIN_PREFIXES)])
        if normalise_prompt(caption) not in holdout.prompts:
            break
    else:
        raise DataError(f"shapes: sample {index}: every phrasing of {caption!r} is an evaluation prompt")
    scene = build_scene(objects, relations, size, rng)
    return Sample(render_scene(scene), caption, kind, "shapes", -1, scene)


def shapes_samples(n: int, size: int, seed: int, holdout: Holdout | None = None,
                   mix: dict | None = None) -> Iterator[Sample]:
    """The first n samples of the shapes training set."""
    table = mix_table(mix)
    for i in range(n):
        yield shapes_sample(i, size, seed, holdout, _table=table)


# ---------------------------------------------------------------- renders for evaluation prompts


def spec_from_geneval(metadata: dict) -> SceneSpec:
    """The scene a GenEval-schema metadata row asks for (include groups; position [rel, k] as relations)."""
    try:
        include = metadata["include"]
        groups = [Group(g["class"], g.get("color"), int(g["count"])) for g in include]
        relations = [(i, g["position"][0], int(g["position"][1])) for i, g in enumerate(include) if g.get("position")]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise DataError(f"geneval metadata row is malformed ({err!r}): {metadata!r}") from None
    return SceneSpec(groups, relations)


def spec_from_dpg(item: dict) -> SceneSpec:
    """The scene a dpg-shapes item (a row of data/prompts/dpg-shapes/items.jsonl) describes."""
    try:
        groups = [Group(g["class"], g.get("color"), int(g.get("count", 1))) for g in item["groups"]]
        relations = [(int(a), rel, int(b)) for a, rel, b in item.get("relations", [])]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"dpg-shapes item is malformed ({err!r}): {item!r}") from None
    return SceneSpec(groups, relations)


def render_spec(spec: SceneSpec, seed: int, size: int) -> tuple[np.ndarray, dict]:
    """A real render (image, scene) satisfying `spec`; unnamed colours are random."""
    for _, rel, _ in spec.relations:
        if rel not in RELATIONS:
            raise DataError(f"shapes: unknown relation {rel!r}; expected one of {RELATIONS}")
    rng = np.random.default_rng([seed, 7919])
    objects, relations = _objects_of(spec, rng)
    scene = build_scene(objects, relations, size, rng)
    return render_scene(scene), scene


def render_geneval(metadata: dict, seed: int, size: int) -> tuple[np.ndarray, dict]:
    """A real image (and its scene) satisfying a geneval-shapes metadata row: the detector's ceiling input."""
    return render_spec(spec_from_geneval(metadata), seed, size)


def render_dpg(item: dict, seed: int, size: int) -> tuple[np.ndarray, dict]:
    """A real image (and its scene) satisfying a dpg-shapes item (see prompt_sets.load_dpg_items)."""
    return render_spec(spec_from_dpg(item), seed, size)
