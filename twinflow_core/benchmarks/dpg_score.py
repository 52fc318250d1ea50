"""DPG-Bench scoring rules as pure functions: question graph + yes/no answers in, DPG score out.

Reproduces TencentQQGYLab/ELLA `dpg_bench/compute_dpg_bench.py`: per tile, a question scores
`answer == "yes"`; walking the questions in CSV order, one whose parent (any non-zero id in `dependency`)
currently scores 0 is zeroed in place (so zeros cascade down the graph); tile score = mean over questions,
image score = mean over tiles, DPG score = 100 x mean over images (one image = one prompt). Category
scores (L2 = the `tuple` column before "(", L1 = its part before "-") average per-question scores taken
*before* the zeroing.

Two defects of the official script are reproduced in `rules="official"` (its issues #60, #61):
- the first CSV data row is skipped; its item keeps its other questions, and when one of them names the
  skipped question as parent the official try/except drops the whole item from every score;
- category scores use the last tile only.
`rules="corrected"` keeps every row and averages categories over all tiles. Both are always computed and
named apart (`score` vs `score_corrected` in metric names); nothing substitutes one for the other.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from twinflow_core.errors import DataError

CSV_COLUMNS = (
    "item_id",
    "text",
    "keywords",
    "proposition_id",
    "dependency",
    "category_broad",
    "category_detailed",
    "tuple",
    "question_natural_language",
)
RULES = ("official", "corrected")


@dataclass(frozen=True)
class Question:
    """One row of the DPG CSV."""

    item_id: str
    proposition_id: int
    dependency: tuple[int, ...]
    tuple: str
    question: str
    category_broad: str = ""
    category_detailed: str = ""
    text: str = ""
    keywords: str = ""

    @property
    def category(self) -> str:
        """L2 category as the official script derives it: the tuple's text before '('."""
        return self.tuple.split("(")[0].strip()

    @property
    def category_l1(self) -> str:
        return self.category.split("-")[0].strip()

    def to_row(self) -> dict:
        return {
            "item_id": self.item_id,
            "text": self.text,
            "keywords": self.keywords,
            "proposition_id": self.proposition_id,
            "dependency": ",".join(str(d) for d in self.dependency) or "0",
            "category_broad": self.category_broad,
            "category_detailed": self.category_detailed,
            "tuple": self.tuple,
            "question_natural_language": self.question,
        }


class MissingParent(DataError):
    """A question names a parent proposition that its item does not have."""


def read_csv(path: str | Path) -> list[Question]:
    """Rows of a DPG CSV (official schema) in file order. Bad rows raise DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"DPG question file not found: {path}")
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [
            c
            for c in ("item_id", "proposition_id", "dependency", "tuple", "question_natural_language")
            if c not in (reader.fieldnames or [])
        ]
        if missing:
            raise DataError(f"{path}: missing DPG columns {missing}")
        rows = []
        for line_no, rec in enumerate(reader, start=2):
            try:
                rows.append(
                    Question(
                        item_id=str(rec["item_id"]).strip(),
                        proposition_id=int(rec["proposition_id"]),
                        dependency=tuple(int(d.strip()) for d in str(rec["dependency"]).split(",")),
                        tuple=rec["tuple"] or "",
                        question=rec["question_natural_language"] or "",
                        category_broad=rec.get("category_broad") or "",
                        category_detailed=rec.get("category_detailed") or "",
                        text=rec.get("text") or "",
                        keywords=rec.get("keywords") or "",
                    )
                )
            except (TypeError, ValueError) as err:
                raise DataError(f"{path}:{line_no}: bad DPG row ({err})") from None
    return rows


def write_csv(questions: Iterable[Question], path: str | Path) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for q in questions:
            writer.writerow(q.to_row())


def group_questions(rows: Sequence[Question], rules: str = "corrected") -> dict[str, dict[int, Question]]:
    """item_id -> {proposition_id: Question} in CSV order.

    official: the first row is skipped, and (as the official loop does) an item restarts its dict whenever
    its rows are not contiguous with the previous row's item. corrected: every row, accumulated per item.
    """
    _check_rules(rules)
    out: dict[str, dict[int, Question]] = {}
    previous = None
    for i, q in enumerate(rows):
        if rules == "official":
            if i == 0:
                continue
            if q.item_id != previous:
                out[q.item_id] = {}
            previous = q.item_id
        out.setdefault(q.item_id, {})[q.proposition_id] = q
    return out


@dataclass
class ItemScore:
    tile_scores: list[float]
    raw: list[dict[int, float]]  # per tile, per question, before the dependency zeroing

    @property
    def score(self) -> float:
        return sum(self.tile_scores) / len(self.tile_scores)


def score_item(questions: Mapping[int, Question], tiles: Sequence[Mapping[int, str]]) -> ItemScore:
    """Score one image: `tiles` holds, per tile, the answer string for every question id."""
    if not tiles:
        raise DataError("DPG: an image needs at least one tile of answers")
    tile_scores, raws = [], []
    for t, answers in enumerate(tiles):
        scores = {}
        for qid, q in questions.items():
            if qid not in answers:
                raise DataError(f"DPG item {q.item_id}: no answer for question {qid} in tile {t}")
            scores[qid] = float(str(answers[qid]) == "yes")
        raws.append(dict(scores))
        for qid, q in questions.items():  # in place and in order: a zeroed parent zeroes later children
            for parent in q.dependency:
                if parent == 0:
                    continue
                if parent not in scores:
                    raise MissingParent(f"DPG item {q.item_id}: question {qid} depends on missing question {parent}")
                if scores[parent] == 0:
                    scores[qid] = 0.0
                    break
        tile_scores.append(sum(scores.values()) / len(scores))
    return ItemScore(tile_scores, raws)


def summarize(
    rows: Sequence[Question], answers: Mapping[str, Sequence[Mapping[int, str]]], rules: str = "corrected"
) -> dict:
    """DPG summary over the images in `answers` (item_id -> tiles -> {proposition_id: answer}).

    official: items the official script would drop (unknown id, first-row parent) are listed in `dropped`
    and left out of every number. corrected: an unknown item or a missing parent is a data error.
    """
    _check_rules(rules)
    grouped = group_questions(rows, rules)
    item_scores: dict[str, float] = {}
    dropped: list[str] = []
    cat_scores: dict[str, list[float]] = {}
    for item_id, tiles in answers.items():
        questions = grouped.get(item_id)
        if questions is None:
            if rules == "official":
                dropped.append(item_id)
                continue
            raise DataError(f"DPG: answers for item {item_id!r}, which has no questions")
        try:
            result = score_item(questions, tiles)
        except MissingParent:
            if rules == "official":
                dropped.append(item_id)
                continue
            raise
        item_scores[item_id] = result.score
        used = result.raw[-1:] if rules == "official" else result.raw
        for raw in used:
            for qid, s in raw.items():
                cat_scores.setdefault(questions[qid].category, []).append(s)
    if not item_scores:
        raise DataError("DPG: no image could be scored")
    l1: dict[str, list[float]] = {}
    for cat in sorted(cat_scores):
        l1.setdefault(cat.split("-")[0].strip(), []).extend(cat_scores[cat])
    mean = lambda v: 100.0 * sum(v) / len(v)  # noqa: E731
    return {
        "rules": rules,
        "score": mean(list(item_scores.values())),
        "n_images": len(item_scores),
        "dropped": dropped,
        "l1": {c: mean(v) for c, v in l1.items()},
        "l2": {c: mean(v) for c, v in sorted(cat_scores.items())},
        "items": item_scores,
    }


def metric_key(category: str) -> str:
    """'entity - whole' -> 'entity-whole' (metric names keep no spaces)."""
    return re.sub(r"\s+", "_", re.sub(r"\s*-\s*", "-", category.strip()))


def summary_metrics(
    official: Mapping, corrected: Mapping | None = None, benchmark: str = "dpg", suffix: str = ""
) -> dict[str, float]:
    """Project metric names: `<b>/score` (official rules), `<b>/score_corrected`, `<b>/l1/<cat>` and
    `<b>/l2/<cat>` from the official rules, `<b>/l1_corrected/<cat>` from the corrected ones."""
    out = {f"{benchmark}/score{suffix}": float(official["score"])}
    for level in ("l1", "l2"):
        for cat, v in official[level].items():
            out[f"{benchmark}/{level}/{metric_key(cat)}{suffix}"] = float(v)
    if corrected is not None:
        out[f"{benchmark}/score_corrected{suffix}"] = float(corrected["score"])
        for cat, v in corrected["l1"].items():
            out[f"{benchmark}/l1_corrected/{metric_key(cat)}{suffix}"] = float(v)
    return out


def _check_rules(rules: str) -> None:
    if rules not in RULES:
        raise DataError(f"DPG rules must be one of {RULES}, got {rules!r}")
