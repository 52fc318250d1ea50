"""What an evaluation is: its configuration (the `evaluate` section of params.yaml), the settings a generator is
sampled under, the domain it is scored in, the prompt sets (one entry per generated image) and the real images
each prompt set is compared with. Running it (generate, perceive, score) is `evaluate.py`.

Settings: `<n>nfe` (the generator, or the flow-matching base with n Euler steps) and, for the base only, the
many-step reference `euler<N>` / `euler<N>-cfg<w>` (N Euler steps, with guidance w > 0). Prompt sets: shapes,
`images_per_prompt` images of each geneval-shapes prompt then of each dpg-shapes item; digits, `digits_per_class`
images of each digit, interleaved. Real references: fresh renders of the same prompts for shapes (seeds
`REAL_SEEDS`), sklearn scans of the same labels for digits (the two real sets share no scan).

The config check (flows/config_check.py) builds an EvalConfig and its settings and must stay light: the prompt
files' readers, the renderers and the digits scans (which load torch via train_evaluators) are imported inside
the functions that use them.
"""

# Lazy imports: torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from twinflow_core.benchmarks import dpg_score
from twinflow_core.data import prompt_sets, shapes
from twinflow_core.data.config import build_config
from twinflow_core.data.digits import caption
from twinflow_core.errors import ConfigError, DataError
from twinflow_core.schema import EVALUATE, check_section, section_defaults, types_of
from twinflow_core.schema import default_field as _d

if TYPE_CHECKING:  # the protocol only: twinflow_core.generator imports torch, which the config check does not need
    from twinflow_core.generator import Generator

DOMAINS = ("shapes", "digits")
REAL_SEEDS = (100_000, 200_000)  # render seeds of the two real reference sets (instrument uses others)
_DEFAULTS = section_defaults(EVALUATE, "evaluate")


@dataclass
class EvalConfig:
    """The `evaluate` section of params.yaml (minus the paths the stage owns)."""

    # defaults, ranges and help: twinflow_core/schema.py EVALUATE
    domain: str = _d(_DEFAULTS, "domain")
    prompts_dir: str = _d(_DEFAULTS, "prompts_dir")
    evaluators_dir: str = _d(_DEFAULTS, "evaluators_dir")
    nfe: list = _d(_DEFAULTS, "nfe")
    style: str = _d(_DEFAULTS, "style")
    base_nfe: list = _d(_DEFAULTS, "base_nfe")
    base_steps: int = _d(_DEFAULTS, "base_steps")
    base_cfg: list = _d(_DEFAULTS, "base_cfg")
    images_per_prompt: int = _d(_DEFAULTS, "images_per_prompt")
    geneval_max_prompts: int = _d(_DEFAULTS, "geneval_max_prompts")
    dpg_max_items: int = _d(_DEFAULTS, "dpg_max_items")
    reference_max_prompts: int = _d(_DEFAULTS, "reference_max_prompts")
    digits_per_class: int = _d(_DEFAULTS, "digits_per_class")
    grid_prompts: int = _d(_DEFAULTS, "grid_prompts")
    seed: int = _d(_DEFAULTS, "seed")
    batch: int = _d(_DEFAULTS, "batch")
    ratio_reference: str = _d(_DEFAULTS, "ratio_reference", "")
    _types = types_of(EVALUATE, "evaluate")

    @classmethod
    def from_dict(cls, raw: dict | None, where: str = "evaluate") -> EvalConfig:
        raw = dict(raw or {})
        cfg = build_config(cls, raw, where)  # an unknown key, a wrong type
        check_section(EVALUATE, "evaluate", raw, shown=where)  # the rows' choices and bounds
        references = [s.label for s in settings_for(cfg, base=True) if s.reference]
        if cfg.ratio_reference and cfg.ratio_reference not in references:
            raise ConfigError(
                f"{where}.ratio_reference: {cfg.ratio_reference!r} is not a reference this evaluation "
                f"samples (base_steps {cfg.base_steps}, base_cfg {cfg.base_cfg} give "
                f"{references or 'none'})"
            )
        return cfg


@dataclass(frozen=True)
class Setting:
    """One way of sampling: `label` is the metric suffix after '@'."""

    label: str
    nfe: int
    style: str
    cfg_scale: float = 0.0
    reference: bool = False  # the many-step reference (may use fewer prompts)

    @property
    def evaluations(self) -> int:
        return self.nfe * (2 if self.cfg_scale > 0 else 1)


def settings_for(cfg: EvalConfig, base: bool) -> list[Setting]:
    if not base:
        return [Setting(f"{n}nfe", n, cfg.style) for n in cfg.nfe]
    out = [Setting(f"{n}nfe", n, "euler") for n in cfg.base_nfe]
    if cfg.base_steps:
        for w in cfg.base_cfg:
            label = f"euler{cfg.base_steps}" + (f"-cfg{float(w):g}" if w > 0 else "")
            out.append(Setting(label, cfg.base_steps, "euler", float(w), reference=True))
    return out


def domain_of(generator: Generator, cfg: EvalConfig) -> str:
    if cfg.domain != "auto":
        return cfg.domain
    vocab = set(generator.vocabulary)
    if "handwritten" in vocab:
        return "digits"
    if {"circle", "square", "triangle", "cross"} <= vocab:
        return "shapes"
    raise ConfigError(
        "evaluate.domain: the checkpoint's vocabulary is neither the shapes world nor digits; "
        "the embedded benchmarks cannot score it (configure the official backends instead)"
    )


# ------------------------------------------------------------------------------------------- prompt sets


@dataclass
class PromptSet:
    """Flat lists, one entry per generated image."""

    captions: list[str]
    groups: list[str]  # prompt identity, for diversity
    geneval_meta: list[dict] = field(default_factory=list)  # shapes: per geneval image
    dpg_items: list[str] = field(default_factory=list)  # shapes: per dpg image
    labels: list[int] = field(default_factory=list)  # digits
    n_geneval: int = 0

    def take(self, idx: Sequence[int]) -> PromptSet:
        """The entries at `idx` (geneval entries first, as in every prompt set here)."""
        idx = list(idx)
        g = [i for i in idx if i < self.n_geneval]
        return PromptSet(
            [self.captions[i] for i in idx],
            [self.groups[i] for i in idx],
            [self.geneval_meta[i] for i in g],
            [self.dpg_items[i - self.n_geneval] for i in idx if i >= self.n_geneval and self.dpg_items],
            [self.labels[i] for i in idx] if self.labels else [],
            n_geneval=len(g),
        )

    def reference_indices(self, n_prompts: int, k: int) -> list[int]:
        """Entries of `n_prompts` geneval prompts (spread over the tags) and `n_prompts` dpg items (or, for
        digits, the first n_prompts x 10 entries): the prompts the many-step reference is run on."""
        if not self.geneval_meta:
            return list(range(min(len(self.captions), n_prompts * 10)))
        out = []
        for p in spread(list(range(self.n_geneval // k)), n_prompts):
            out += range(p * k, p * k + k)
        for p in spread(list(range(len(self.dpg_items) // k)), n_prompts):
            out += range(self.n_geneval + p * k, self.n_geneval + p * k + k)
        return out


def spread(rows: list[dict], n: int) -> list[dict]:
    """n rows spread evenly over the list (which is grouped by tag), or all when n is 0 or too large."""
    if not n or n >= len(rows):
        return list(rows)
    idx = np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))
    return [rows[i] for i in idx]


def shapes_prompt_set(cfg: EvalConfig) -> tuple[PromptSet, list[dict], list[dict], list[dpg_score.Question]]:
    meta = spread(prompt_sets.load_geneval_metadata(cfg.prompts_dir), cfg.geneval_max_prompts)
    items = prompt_sets.load_dpg_items(cfg.prompts_dir)
    items = items[: cfg.dpg_max_items] if cfg.dpg_max_items else items
    questions = dpg_score.read_csv(Path(cfg.prompts_dir) / prompt_sets.DPG_DIR / prompt_sets.DPG_CSV)
    keep = {it["item_id"] for it in items}
    questions = [q for q in questions if q.item_id in keep]
    k = cfg.images_per_prompt
    ps = PromptSet([], [])
    for m in meta:
        for _ in range(k):
            ps.captions.append(m["prompt"])
            ps.groups.append("g:" + m["prompt"])
            ps.geneval_meta.append(m)
    ps.n_geneval = len(ps.captions)
    for it in items:
        for _ in range(k):
            ps.captions.append(it["text"])
            ps.groups.append("d:" + it["item_id"])
            ps.dpg_items.append(it["item_id"])
    return ps, meta, items, questions


def digits_prompt_set(cfg: EvalConfig) -> PromptSet:
    ps = PromptSet([], [])
    for _ in range(cfg.digits_per_class):  # interleaved, so any prefix is balanced over the classes
        for d in range(10):
            ps.captions.append(caption(d))
            ps.groups.append(str(d))
            ps.labels.append(d)
    return ps


def real_shapes_images(ps: PromptSet, items: list[dict], seed: int, size: int) -> np.ndarray:
    """A real render for every entry of the prompt set (fresh scenes, seeds derived from `seed`)."""

    by_id = {it["item_id"]: it for it in items}
    out = [shapes.render_geneval(m, seed + i, size)[0] for i, m in enumerate(ps.geneval_meta)]
    out += [shapes.render_dpg(by_id[d], seed + 50_000 + i, size)[0] for i, d in enumerate(ps.dpg_items)]
    return np.stack(out)


def real_digits_images(labels: Sequence[int], size: int, part: int) -> np.ndarray:
    """Real scans with the given labels: part 0 from the classifier's held-out test split, part 1 from its
    training split (so the two real sets share no scan)."""
    from twinflow_core.benchmarks.train_evaluators import DIGITS_TRAIN, digits_arrays

    images, y = digits_arrays(size)
    pool = np.arange(DIGITS_TRAIN, len(y)) if part == 0 else np.arange(DIGITS_TRAIN)
    taken: dict[int, int] = {}
    out = []
    for lab in labels:
        cands = pool[y[pool] == lab]
        j = taken.get(lab, 0)
        if j >= len(cands):
            raise DataError(f"digits: only {len(cands)} real scans of {lab} in split {part}; lower digits_per_class")
        out.append(images[cands[j]])
        taken[lab] = j + 1
    return np.stack(out)
