"""Evaluate a generator the way the TwinFlow paper does, on the embedded benchmarks: generate the prompt sets
at 1, 2 and 4 NFE (and the flow-matching base at 1, 2, 4 NFE and at N Euler steps with and without
guidance), perceive, score, and return one flat dict of metrics whose names carry benchmark and setting:

    geneval-shapes/overall@1nfe, geneval-shapes/<tag>@1nfe, geneval-shapes/correct_prompts@1nfe,
    dpg-shapes/score@1nfe (official rules), dpg-shapes/score_corrected@1nfe, dpg-shapes/l1/<cat>@1nfe,
    features-shapes/fd@1nfe, features-shapes/diversity@1nfe, throughput/images_per_s@1nfe,
    base/<the same>@1nfe ... base/<the same>@euler50, base/<the same>@euler50-cfg0.5,
    features-shapes/fd@real, features-shapes/diversity@real   (real renders vs real renders: the floor)

Each benchmark score carries its standard error over prompts (`geneval-shapes/overall_se@1nfe`,
`dpg-shapes/score_se@1nfe`, official rules; see uncertainty.py), and `paired_ratios` adds the paper's claim
as numbers: `ratio/<bench>/<metric>@<setting>` = the model at <setting> / the base at the reference setting
(`ratio_reference`, e.g. euler50-cfg0.5) on the same prompts, with `ratio/<bench>/<metric>_se@<setting>`
(delta method, paired over prompts); `ratio/base/...@1nfe` is the base's own 1-step collapse on that scale.

For digits: digits/accuracy@<setting>, features-digits/fd@<setting>, features-digits/diversity@<setting>.
Frechet distances compare generated images with real images of the same prompts (fresh renders for shapes,
sklearn scans for digits); `@real` compares two real sets of the same size, the lowest the FD can go here.

Core only (no MLflow, Prefect or DVC): `flows/stages/evaluate.py` wires it to params.yaml and the outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from twinflow_core.benchmarks import dpg_score, geneval_score, uncertainty
from twinflow_core.benchmarks.features import diversity, frechet_distance
from twinflow_core.errors import ConfigError, DataError
from twinflow_core.schema import EVALUATE, section_defaults
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

    @classmethod
    def from_dict(cls, raw: dict | None, where: str = "evaluate") -> EvalConfig:
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**raw)
        if cfg.domain not in (*DOMAINS, "auto"):
            raise ConfigError(f"{where}.domain: expected one of {DOMAINS} or 'auto', got {cfg.domain!r}")
        for name in ("nfe", "base_nfe"):
            vals = getattr(cfg, name)
            if not isinstance(vals, list) or not all(isinstance(v, int) and v >= 1 for v in vals):
                raise ConfigError(f"{where}.{name}: expected a list of integers >= 1, got {vals!r}")
        if cfg.images_per_prompt < 2:
            raise ConfigError(f"{where}.images_per_prompt: diversity needs >= 2, got {cfg.images_per_prompt}")
        if cfg.base_steps < 0:
            raise ConfigError(f"{where}.base_steps: expected >= 0, got {cfg.base_steps}")
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


# ------------------------------------------------------------------------------------------- scoring


def score_geneval_shapes(images: Sequence[np.ndarray], metadata: Sequence[dict], detector) -> tuple[dict, list[dict]]:
    """images[i] is a sample of prompt metadata[i]; returns (official summary, result rows)."""
    detections = detector.detect_many(np.asarray(images))
    rows = []
    for i, (meta, dets) in enumerate(zip(metadata, detections)):
        ok, reason, objects = geneval_score.score_image(dets, meta)
        rows.append(geneval_score.result_row(f"{i:05d}.png", meta, ok, reason, objects))
    return geneval_score.summarize(rows), rows


def score_dpg_shapes(
    images: Sequence[np.ndarray], item_ids: Sequence[str], questions: Sequence[dpg_score.Question], detector
) -> dict:
    """images[i] is one tile of item item_ids[i] (tiles of an item in order); both rule sets."""
    from twinflow_core.benchmarks.shapes_detector import answer_item

    grouped = dpg_score.group_questions(questions, "corrected")
    detections = detector.detect_many(np.asarray(images))
    answers: dict[str, list[dict[int, str]]] = {}
    for item, dets in zip(item_ids, detections):
        answers.setdefault(item, []).append(answer_item(grouped[item], dets))
    return {
        "official": dpg_score.summarize(questions, answers, "official"),
        "corrected": dpg_score.summarize(questions, answers, "corrected"),
        "answers": answers,
    }


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
    from twinflow_core.data import prompt_sets

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
    from twinflow_core.data.digits import caption

    ps = PromptSet([], [])
    for _ in range(cfg.digits_per_class):  # interleaved, so any prefix is balanced over the classes
        for d in range(10):
            ps.captions.append(caption(d))
            ps.groups.append(str(d))
            ps.labels.append(d)
    return ps


def real_shapes_images(ps: PromptSet, items: list[dict], seed: int, size: int) -> np.ndarray:
    """A real render for every entry of the prompt set (fresh scenes, seeds derived from `seed`)."""
    from twinflow_core.data import shapes

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


# ------------------------------------------------------------------------------------------- generation


def generate_set(
    generator, captions: Sequence[str], setting: Setting, seed: int, batch: int, desc: str = ""
) -> tuple[np.ndarray, float]:
    """All images of a prompt set under one setting, and the images/s it ran at."""
    from tqdm import tqdm

    out = []
    t0 = time.perf_counter()
    for b, start in enumerate(tqdm(range(0, len(captions), batch), desc=desc or setting.label, leave=False)):
        out.append(
            generator.generate(
                list(captions[start : start + batch]),
                nfe=setting.nfe,
                seed=seed * 100_003 + b,
                style=setting.style,
                cfg_scale=setting.cfg_scale,
            )
        )
    dt = time.perf_counter() - t0
    return np.concatenate(out), len(captions) / max(dt, 1e-9)


# ------------------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluators:
    domain: str
    detector: object = None  # shapes
    features: object = None  # EvaluatorNet with .embed
    classifier: object = None  # digits

    @classmethod
    def load(cls, domain: str, directory: str | Path) -> Evaluators:
        from twinflow_core.benchmarks.evaluator_net import load_evaluator

        directory = Path(directory)
        if domain == "shapes":
            from twinflow_core.benchmarks.shapes_detector import ShapesDetector

            return cls(
                domain,
                ShapesDetector.load(directory / "shapes-detector"),
                load_evaluator(directory / "shapes-features")[0],
            )
        net, _ = load_evaluator(directory / "digits-classifier")
        return cls(domain, features=net, classifier=net)


@dataclass
class Result:
    metrics: dict[str, float]
    breakdown: dict  # per setting: geneval summary, dpg summaries (no per-image data)
    grids: dict[str, tuple[np.ndarray, list[str]]]  # name -> (images, captions)
    curves: list[dict]  # one row per (model, setting) for plots
    per_prompt: dict = field(default_factory=dict)  # "<prefix><bench><suffix>@<label>" -> {prompt: (stratum, score)}


class Evaluation:
    """Holds the prompt set, the real references and the evaluators for one domain; `run(generator, ...)`
    scores one checkpoint under a list of settings."""

    def __init__(
        self,
        cfg: EvalConfig,
        domain: str,
        image_size: int,
        evaluators: Evaluators | None = None,
        progress: Callable[[str], None] = print,
    ):
        self.cfg, self.domain, self.size, self.log = cfg, domain, image_size, progress
        self.ev = evaluators or Evaluators.load(domain, cfg.evaluators_dir)
        if domain == "shapes":
            self.ps, self.meta, self.items, self.questions = shapes_prompt_set(cfg)
            real_a = real_shapes_images(self.ps, self.items, REAL_SEEDS[0], image_size)
            real_b = real_shapes_images(self.ps, self.items, REAL_SEEDS[1], image_size)
        else:
            self.ps = digits_prompt_set(cfg)
            real_a = real_digits_images(self.ps.labels, image_size, 0)
            real_b = real_digits_images(self.ps.labels, image_size, 1)
        self.real_a_feats = self.ev.features.embed(real_a)
        self.real_b_feats = self.ev.features.embed(real_b)

    @property
    def fname(self) -> str:
        return f"features-{self.domain}"

    def real_metrics(self) -> dict[str, float]:
        """The floor of the feature figures: a second real set against the first (on the full prompt set
        and, when the reference runs on fewer prompts, on those)."""
        out = {
            f"{self.fname}/fd@real": frechet_distance(self.real_b_feats, self.real_a_feats),
            f"{self.fname}/diversity@real": diversity(self.real_b_feats, self.ps.groups),
        }
        if self.cfg.reference_max_prompts:
            k = self.cfg.images_per_prompt if self.domain == "shapes" else 1
            idx = self.ps.reference_indices(self.cfg.reference_max_prompts, k)
            out[f"{self.fname}-refset/fd@real"] = frechet_distance(self.real_b_feats[idx], self.real_a_feats[idx])
            out[f"{self.fname}-refset/diversity@real"] = diversity(self.real_b_feats[idx], self.ps.take(idx).groups)
        return out

    def score(
        self,
        images: np.ndarray,
        ps: PromptSet,
        prefix: str,
        label: str,
        idx: Sequence[int] | None = None,
        suffix: str = "",
        per_prompt: dict | None = None,
    ) -> tuple[dict, dict, list[str]]:
        """(metrics, breakdown, grid verdicts) of one generated set; `idx`: its entries' positions in the full
        prompt set (None: it is the full set), `suffix` is appended to the benchmark names."""
        at = f"@{label}"
        metrics: dict[str, float] = {}
        breakdown: dict = {}
        verdicts: list[str] = []
        feats = self.ev.features.embed(images)
        real = self.real_a_feats if idx is None else self.real_a_feats[list(idx)]
        fname = self.fname + suffix
        if self.domain == "shapes":
            g = ps.n_geneval
            summary, rows = score_geneval_shapes(images[:g], ps.geneval_meta, self.ev.detector)
            metrics.update(geneval_score.summary_metrics(summary, prefix + "geneval-shapes" + suffix, at))
            breakdown["geneval-shapes"] = summary
            verdicts = ["ok" if r["correct"] else "x" for r in rows]
            per: dict[str, dict] = {}
            for r, m in zip(rows, ps.geneval_meta):
                per.setdefault(m["prompt"], {"tag": m["tag"], "ok": []})["ok"].append(float(bool(r["correct"])))
            gp = {p: (v["tag"], sum(v["ok"]) / len(v["ok"])) for p, v in per.items()}
            metrics[f"{prefix}geneval-shapes{suffix}/overall_se{at}"] = uncertainty.score_se(gp)[1]
            if per_prompt is not None:
                per_prompt[f"{prefix}geneval-shapes{suffix}/overall{at}"] = gp
            if ps.dpg_items:
                dpg = score_dpg_shapes(images[g:], ps.dpg_items, self.questions, self.ev.detector)
                metrics.update(
                    dpg_score.summary_metrics(dpg["official"], dpg["corrected"], prefix + "dpg-shapes" + suffix, at)
                )
                dp = {i: ("dpg", float(v)) for i, v in dpg["official"]["items"].items()}
                metrics[f"{prefix}dpg-shapes{suffix}/score_se{at}"] = uncertainty.score_se(dp, 100.0)[1]
                if per_prompt is not None:
                    per_prompt[f"{prefix}dpg-shapes{suffix}/score{at}"] = dp
                breakdown["dpg-shapes"] = {
                    k: {kk: vv for kk, vv in v.items() if kk != "items"} for k, v in dpg.items() if k != "answers"
                }
        else:
            pred = self.ev.classifier.predict_logits(images).argmax(1)
            correct = pred == np.asarray(ps.labels)
            metrics[f"{prefix}digits{suffix}/accuracy{at}"] = float(correct.mean())
            breakdown["digits"] = {str(d): float(correct[np.asarray(ps.labels) == d].mean()) for d in range(10)}
            verdicts = [f"read {p}" for p in pred]
        metrics[f"{prefix}{fname}/fd{at}"] = frechet_distance(feats, real)
        metrics[f"{prefix}{fname}/diversity{at}"] = diversity(feats, ps.groups)
        return metrics, breakdown, verdicts

    def run(self, generator, settings: Sequence[Setting], prefix: str = "", name: str = "") -> Result:
        cfg = self.cfg
        metrics: dict[str, float] = {}
        breakdown: dict = {}
        grids: dict = {}
        curves: list[dict] = []
        per_prompt: dict = {}
        k = cfg.images_per_prompt if self.domain == "shapes" else 1
        # The many-step reference may run on fewer prompts; then every setting is also scored on exactly those
        # prompts, under the benchmark names with a "-refset" suffix, so that 1 NFE and 50 steps compare
        # like with like (the full-set figures are not comparable with a subset's).
        ref_idx = self.ps.reference_indices(cfg.reference_max_prompts, k) if cfg.reference_max_prompts else None
        ref_ps = self.ps.take(ref_idx) if ref_idx is not None else None
        for s in settings:
            use_ref = s.reference and ref_ps is not None
            ps = ref_ps if use_ref else self.ps
            self.log(
                f"evaluate {name or 'model'} @{s.label}: {len(ps.captions)} images, {s.evaluations} evaluations each"
            )
            images, ips = generate_set(generator, ps.captions, s, cfg.seed, cfg.batch, f"{name}@{s.label}")
            if use_ref:
                m, b, verdicts = self.score(
                    images, ps, prefix, s.label, ref_idx, suffix="-refset", per_prompt=per_prompt
                )
            else:
                m, b, verdicts = self.score(images, ps, prefix, s.label, per_prompt=per_prompt)
            m[f"{prefix}throughput/images_per_s@{s.label}"] = ips
            if not use_ref and ref_ps is not None:
                m.update(
                    self.score(
                        images[ref_idx], ref_ps, prefix, s.label, ref_idx, suffix="-refset", per_prompt=per_prompt
                    )[0]
                )
                curves.append(self._curve_row(name or "model", s, m, prefix, "-refset"))
            metrics.update(m)
            breakdown[f"{prefix}{s.label}"] = b
            grids[f"{prefix.replace('/', '_')}{s.label}"] = self._grid(images, ps, verdicts, k)
            curves.append(self._curve_row(name or "model", s, m, prefix, "-refset" if use_ref else ""))
        return Result(metrics, breakdown, grids, curves, per_prompt)

    def _grid(self, images, ps: PromptSet, verdicts, k: int):
        n_prompts = len(ps.captions) // k
        picks = spread(list(range(n_prompts)), min(self.cfg.grid_prompts, n_prompts))
        idx = [p * k for p in picks]
        caps = [f"{ps.captions[i]} [{verdicts[i]}]" if i < len(verdicts) else ps.captions[i] for i in idx]
        return images[idx], caps

    def _curve_row(self, model: str, s: Setting, m: dict, prefix: str, suffix: str) -> dict:
        at = f"@{s.label}"
        row = {"model": model, "setting": s.label, "nfe": s.evaluations, "prompts": "refset" if suffix else "all"}
        f = self.fname + suffix
        for key, col in (
            (f"{prefix}geneval-shapes{suffix}/overall{at}", "geneval_shapes"),
            (f"{prefix}dpg-shapes{suffix}/score{at}", "dpg_shapes"),
            (f"{prefix}digits{suffix}/accuracy{at}", "digits"),
            (f"{prefix}{f}/fd{at}", "fd"),
            (f"{prefix}{f}/diversity{at}", "diversity"),
            (f"{prefix}throughput/images_per_s{at}", "images_per_s"),
        ):
            if key in m:
                row[col] = round(float(m[key]), 6)
        return row


def paired_ratios(per_prompt: dict, reference: str) -> dict[str, float]:
    """`ratio/<M>@<s>` and `ratio/<M>_se@<s>` for every per-prompt score `<M>@<s>` (TwinFlow's and the base's
    few-step ones) against `base/<M>@<reference>`; when the reference ran on a prompt subset (-refset names),
    the subset's scores are the ones paired. A reference that scored 0 gives no ratio (the keys are absent)."""
    out: dict[str, float] = {}
    for key, values in per_prompt.items():
        name, _, label = key.rpartition("@")
        if label == reference:
            continue
        bench, _, metric = name.removeprefix("base/").partition("/")
        model = "base/" if name.startswith("base/") else ""
        ref = per_prompt.get(f"base/{bench}/{metric}@{reference}")
        if ref is None:
            continue
        r, se = uncertainty.paired_ratio(values, ref)  # a ratio is scale-free: DPG's x100 cancels
        if r != r:  # the reference scored 0: no ratio (eval.json stays plain JSON, without NaN)
            continue
        out[f"ratio/{model}{bench}/{metric}@{label}"] = r
        out[f"ratio/{model}{bench}/{metric}_se@{label}"] = se
    return out


# ------------------------------------------------------------------------------------------- official


def run_official(generator, official: dict, nfe: Sequence[int], workdir: str | Path, seed: int = 0) -> dict[str, float]:
    """Generate the official prompt sets, write their layouts, run the configured official scorers and return
    `geneval/...@<n>nfe` and `dpg/...@<n>nfe` metrics. `official` is the `evaluate.official` section:
    {enabled, geneval: {checkout, python, weights, ..., prompts?, images_per_prompt?, max_prompts?},
     dpg: {checkout, python, ..., csv?, prompts_dir?, resolution?, max_items?}}; either part may be absent."""
    import json as _json

    from twinflow_core.benchmarks import official as off

    workdir = Path(workdir)
    metrics: dict[str, float] = {}
    known = {"enabled", "geneval", "dpg"}
    if set(official) - known:
        raise ConfigError(f"evaluate.official: unknown keys {sorted(set(official) - known)}")
    own = ("prompts", "images_per_prompt", "max_prompts", "csv", "prompts_dir", "resolution", "max_items")
    if official.get("geneval"):
        g = dict(official["geneval"])
        opts = {k: g.pop(k) for k in own if k in g}
        scorer = off.OfficialScorer.from_dict(g, "evaluate.official.geneval")
        path = Path(opts.get("prompts") or Path(scorer.checkout) / "prompts" / "evaluation_metadata.jsonl")
        if not path.is_file():
            raise ConfigError(f"evaluate.official.geneval.prompts: {path} not found")
        rows = [_json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = rows[: opts["max_prompts"]] if opts.get("max_prompts") else rows
        k = int(opts.get("images_per_prompt", 4))
        for n in nfe:
            s = Setting(f"{n}nfe", n, "few")
            imgs, _ = generate_set(
                generator, [r["prompt"] for r in rows for _ in range(k)], s, seed, 64, f"geneval@{s.label}"
            )
            layout = off.write_geneval_layout(
                workdir / f"geneval-{s.label}", rows, imgs.reshape(len(rows), k, *imgs.shape[1:])
            )
            summary = off.run_geneval(scorer, layout, workdir / f"geneval-{s.label}-results.jsonl")
            metrics.update(geneval_score.summary_metrics(summary, "geneval", f"@{s.label}"))
    if official.get("dpg"):
        d = dict(official["dpg"])
        opts = {k: d.pop(k) for k in own if k in d}
        scorer = off.OfficialScorer.from_dict(d, "evaluate.official.dpg")
        csv_path = Path(opts.get("csv") or Path(scorer.checkout) / "dpg_bench" / "dpg_bench.csv")
        prompts_dir = Path(opts.get("prompts_dir") or Path(scorer.checkout) / "dpg_bench" / "prompts")
        if not csv_path.is_file() or not prompts_dir.is_dir():
            raise ConfigError(f"evaluate.official.dpg: need {csv_path} and {prompts_dir}")
        items = sorted(p.stem for p in prompts_dir.glob("*.txt"))
        items = items[: opts["max_items"]] if opts.get("max_items") else items
        texts = [(prompts_dir / f"{i}.txt").read_text().strip() for i in items]
        for n in nfe:
            s = Setting(f"{n}nfe", n, "few")
            imgs, _ = generate_set(generator, [t for t in texts for _ in range(4)], s, seed, 64, f"dpg@{s.label}")
            layout = off.write_dpg_layout(
                workdir / f"dpg-{s.label}", items, imgs.reshape(len(items), 4, *imgs.shape[1:])
            )
            res = off.run_dpg(
                scorer,
                layout,
                workdir / f"dpg-{s.label}_results.txt",
                csv_path,
                resolution=int(opts.get("resolution", imgs.shape[1])),
            )
            metrics.update({f"{k}@{s.label}": v for k, v in res["metrics"].items()})
            if "rescored" in res and res["rescored"]["corrected"] is not None:
                metrics[f"dpg/score_corrected@{s.label}"] = float(res["rescored"]["corrected"]["score"])
    return metrics
