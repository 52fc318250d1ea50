"""Perception for the shapes world: pixels -> detections (class, colour, box, confidence) -> DPG yes/no answers.

How it looks at an image:
1. background = median of the border pixels; every pixel gets, for each palette colour c, its mixing
   coefficient alpha along background -> c and the distance off that line; a pixel belongs to colour c
   when alpha >= 0.5 and it sits close to c's line (anti-aliased edges count, a muddy blend does not);
2. connected components (4-neighbour) per colour are the candidate objects; the box is the component's
   extent (alpha >= 0.5, as the renderer's anti-aliasing makes edge pixels about half covered);
3. a small CNN (trained only on rendered scenes, see `train_shape_classifier`) reads the component's alpha
   map, cropped square around it, and says circle / square / triangle / cross / not-an-object;
4. confidence = that class's probability x crispness, where crispness is the 90th percentile of the
   component's alpha mapped from [0.6, 0.9] to [0, 1]: an object reaches its full colour inside, while a
   blurry blend (a flow-matching model's 1-step mean) does not, and is not confidently an object, as a
   detector trained on photographs would not be confident about it either.

The colour of a detection is its component's palette colour (a forced choice, like GenEval's CLIP colour
classifier). Weights live in artifacts/evaluators/shapes-detector/ (see bench/instrument.py --train).
"""

# Lazy imports: scipy, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinflow_core.benchmarks.geneval_score import Detection, relative_position
from twinflow_core.data.shapes import COLORS, PLURAL
from twinflow_core.errors import DataError

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
JUNK = len(SHAPE_CLASSES)  # index of the not-an-object class
CROP = 16
ALPHA_ON = 0.5
MAX_OFF_LINE = 0.3  # distance off the background->colour line, as a fraction of |colour - background|
MIN_AREA_FRAC = 0.012  # smallest component kept, as a fraction of the image area
CRISP_LO, CRISP_HI = 0.6, 0.9
DPG_THRESHOLD = 0.3  # detections above this confidence answer DPG questions (GenEval's default)


def _palette() -> dict[str, np.ndarray]:
    return {name: np.asarray(rgb, np.float64) for name, rgb in COLORS.items()}


@dataclass
class Component:
    color: str
    box: tuple[float, float, float, float]
    alpha_crop: np.ndarray  # (CROP, CROP) float32 in [0,1]
    crisp: float
    area: int


def background_of(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    return np.median(border, axis=0)


def colour_maps(image: np.ndarray, palette: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(label (H,W) int: palette index or -1, alpha (H,W) of that colour, colour names)."""
    img = np.asarray(image, np.float64)
    bg = background_of(img)
    names = list(palette)
    d = img - bg
    alphas, offs = [], []
    for name in names:
        v = palette[name] - bg
        vv = float(v @ v) or 1.0
        a = (d @ v) / vv
        off = np.linalg.norm(d - a[..., None] * v, axis=-1) / np.sqrt(vv)
        alphas.append(a)
        offs.append(off)
    alphas, offs = np.stack(alphas), np.stack(offs)
    # Best colour per pixel: closest to its line among those it moves towards.
    score = np.where(alphas > 0.2, offs, np.inf)
    best = score.argmin(axis=0)
    alpha = np.take_along_axis(alphas, best[None], 0)[0]
    off = np.take_along_axis(offs, best[None], 0)[0]
    label = np.where((alpha >= ALPHA_ON) & (off <= MAX_OFF_LINE * np.maximum(alpha, 1.0)), best, -1)
    return label, np.clip(alpha, 0.0, 1.0), names


def components(image: np.ndarray, palette: Mapping[str, np.ndarray] | None = None) -> list[Component]:
    """Candidate objects of an image: connected same-colour regions with their alpha crops."""
    from scipy import ndimage

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise DataError(f"shapes detector: expected an (H,W,3) image, got shape {img.shape}")
    h, w = img.shape[:2]
    palette = palette or _palette()
    label, alpha, names = colour_maps(img, palette)
    out = []
    min_area = max(3, int(MIN_AREA_FRAC * h * w))
    for ci, name in enumerate(names):
        lab, n = ndimage.label(label == ci)
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            mask = lab[sl] == k
            area = int(mask.sum())
            if area < min_area:
                continue
            ys, xs = sl
            box = (float(xs.start), float(ys.start), float(xs.stop), float(ys.stop))
            # The CNN sees this colour's alpha around the component, other components blanked out.
            region = np.zeros((h, w), np.float32)
            region[lab == k] = alpha[lab == k]
            grown = ndimage.binary_dilation(lab == k, iterations=1) & (label == -1)
            region[grown] = alpha[grown] * (alpha[grown] > 0)
            crisp = float(np.clip((np.percentile(alpha[sl][mask], 90) - CRISP_LO) / (CRISP_HI - CRISP_LO), 0, 1))
            out.append(Component(name, box, square_crop(region, box), crisp, area))
    return out


def square_crop(region: np.ndarray, box: Sequence[float], size: int = CROP, margin: float = 0.2) -> np.ndarray:
    """A square window around `box` (side = longer box side x (1 + 2 margin)), resampled to size x size."""
    from scipy import ndimage

    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # Sample at the centres of a size x size grid over the window (pixel i covers [i, i+1), centre i+0.5).
    t = (np.arange(size) + 0.5) / size - 0.5
    ys, xs = np.meshgrid(cy + t * side - 0.5, cx + t * side - 0.5, indexing="ij")
    return ndimage.map_coordinates(region.astype(np.float32), [ys, xs], order=1, mode="constant", cval=0.0)


class ShapesDetector:
    """Components + the crop classifier. `detect(image)` -> detections, `detect_many(images)` batched."""

    def __init__(self, classifier):
        self.classifier = classifier

    @classmethod
    def load(cls, directory: str | Path) -> ShapesDetector:
        from twinflow_core.benchmarks.evaluator_net import load_evaluator

        net, meta = load_evaluator(directory)
        if meta.get("kind") != "shapes-crop-classifier":
            raise DataError(f"{directory}: not a shapes crop classifier (kind={meta.get('kind')!r})")
        return cls(net)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Softmax over (circle, square, triangle, cross, junk) for (N, CROP, CROP) alpha crops."""
        import torch

        if len(crops) == 0:
            return np.zeros((0, JUNK + 1))
        x = torch.from_numpy(np.asarray(crops, np.float32))[:, None].repeat(1, 3, 1, 1) * 2 - 1
        with torch.no_grad():
            self.classifier.eval()
            return torch.softmax(self.classifier(x), dim=1).numpy()

    def detect_many(self, images: np.ndarray) -> list[list[Detection]]:
        palette = _palette()
        comps = [components(img, palette) for img in images]
        flat = [c for cs in comps for c in cs]
        probs = self.classify(np.stack([c.alpha_crop for c in flat]) if flat else np.zeros((0, CROP, CROP)))
        out, i = [], 0
        for cs in comps:
            dets = []
            for c in cs:
                p = probs[i]
                i += 1
                k = int(p[:JUNK].argmax())
                dets.append(Detection(SHAPE_CLASSES[k], c.box, float(p[k] * c.crisp), c.color))
            out.append(sorted(dets, key=lambda d: -d.score))
        return out

    def detect(self, image: np.ndarray) -> list[Detection]:
        return self.detect_many(np.asarray(image)[None])[0]


# ------------------------------------------------------------------------------------------- DPG answers

_TUPLE = re.compile(r"^\s*(\w+)\s*-\s*(\w+)\s*\((.*)\)\s*$")


def _singular(word: str) -> str:
    back = {v: k for k, v in PLURAL.items()}
    return back.get(word, word)


def answer_question(tuple_text: str, detections: Sequence[Detection], threshold: float = DPG_THRESHOLD) -> str:
    """'yes' / 'no' to one dpg-shapes question, from its `tuple` column and an image's detections.

    entity - whole (c): an object of class c; other - count (cs, ==n): exactly n; attribute - color (c, k):
    singular, some c is k; plural, every c is k; relation - spatial (a, b, rel): the most confident a is
    `rel` the most confident b under GenEval's relative-position rule. Any object phrase may carry a colour
    ("blue circle", "blue triangles"): only objects of that colour count (dpg-shapes binds colour and class).
    """
    m = _TUPLE.match(tuple_text)
    if not m:
        raise DataError(f"dpg-shapes: cannot read question tuple {tuple_text!r}")
    broad, detailed, args = m[1], m[2], [a.strip() for a in m[3].split(",")]
    kept = [d for d in detections if d.score > threshold]

    def of(phrase: str) -> list[Detection]:
        """Detections named by 'circle', 'triangles' or, colour-bound, 'blue circle' / 'blue triangles'."""
        words = phrase.split()
        color = words[0] if len(words) == 2 else None
        return [d for d in kept if d.cls == _singular(words[-1]) and (color is None or d.color == color)]

    if (broad, detailed) == ("entity", "whole"):
        ok = len(of(args[0])) >= 1
    elif (broad, detailed) == ("other", "count"):
        ok = len(of(args[0])) == int(args[1].lstrip("="))
    elif (broad, detailed) == ("attribute", "color"):
        objs = of(args[0])
        plural = _singular(args[0].split()[-1]) != args[0].split()[-1]
        ok = bool(objs) and (all if plural else any)(d.color == args[1] for d in objs)
    elif (broad, detailed) == ("relation", "spatial"):
        a, b = of(args[0]), of(args[1])
        ok = bool(a and b) and args[2] in relative_position(a[0].box, b[0].box)
    else:
        raise DataError(f"dpg-shapes: no answerer for question kind {broad} - {detailed} ({tuple_text!r})")
    return "yes" if ok else "no"


def answer_item(questions: Mapping[int, object], detections: Sequence[Detection]) -> dict[int, str]:
    """Answers to every question (dpg_score.Question by proposition id) of one image/tile."""
    return {qid: answer_question(q.tuple, detections) for qid, q in questions.items()}
