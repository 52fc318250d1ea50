"""Run an evaluation the way the TwinFlow paper does, on the embedded benchmarks: generate the prompt sets of
protocol.py at 1, 2 and 4 NFE (and the flow-matching base at 1, 2, 4 NFE and at N Euler steps with and without
guidance), perceive, score, and return one flat dict of metrics whose names carry benchmark and setting:

    geneval-shapes/overall@1nfe, geneval-shapes/<tag>@1nfe, geneval-shapes/correct_prompts@1nfe,
    dpg-shapes/score@1nfe (official rules), dpg-shapes/score_corrected@1nfe, dpg-shapes/l1/<cat>@1nfe,
    features-shapes/fd@1nfe, features-shapes/diversity@1nfe, throughput/images_per_s@1nfe,
    base/<the same>@1nfe ... base/<the same>@euler50, base/<the same>@euler50-cfg0.5,
    features-shapes/fd@real, features-shapes/diversity@real   (real renders vs real renders: the floor)

Each benchmark score carries its standard error over prompts (`geneval-shapes/overall_se@1nfe`,
`dpg-shapes/score_se@1nfe`, official rules), and the per-prompt scores that uncertainty.py `paired_ratios`
turns into the paper's claim as numbers (`ratio/<bench>/<metric>@<setting>`).

For digits: digits/accuracy@<setting>, features-digits/fd@<setting>, features-digits/diversity@<setting>.
Frechet distances compare generated images with real images of the same prompts (protocol.py: fresh renders for
shapes, sklearn scans for digits); `@real` compares two real sets of the same size, the lowest the FD can go here.
The perception backends (evaluator_net imports torch) and tqdm are imported inside the functions that use them.

Core only (no MLflow, Prefect or DVC): `flows/stages/evaluate.py` wires it to params.yaml and the outputs.
"""

# Lazy imports: torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from twinflow_core.benchmarks import dpg_score, geneval_score, uncertainty
from twinflow_core.benchmarks.features import diversity, frechet_distance
from twinflow_core.benchmarks.protocol import (
    REAL_SEEDS,
    EvalConfig,
    PromptSet,
    Setting,
    digits_prompt_set,
    real_digits_images,
    real_shapes_images,
    shapes_prompt_set,
    spread,
)
from twinflow_core.benchmarks.shapes_detector import ShapesDetector, answer_item

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


# ------------------------------------------------------------------------------------------- generation


def generate_set(
    generator, captions: Sequence[str], setting: Setting, seed: int, batch: int, desc: str = ""
) -> tuple[np.ndarray, float]:
    """All images of a prompt set under one setting, and the images/s it ran at."""

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
