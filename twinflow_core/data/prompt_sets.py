"""The embedded benchmarks' prompt sets, in the official file schemas, and the training holdout they imply.

`geneval-shapes/evaluation_metadata.jsonl`: GenEval's schema (one JSON object a line: tag, include groups of
class/count/color/position [rel, k], exclude groups for counting, prompt), its six tags, its "a photo of"
wording, shapes classes and colours. `dpg-shapes/dpg_bench.csv`: DPG-Bench's question-graph schema (one row per
proposition, dependency = parent proposition ids, 0 = none) plus `prompts/<item_id>.txt`; `items.jsonl` adds
each item's scene spec so a satisfying image can be rendered (`shapes.render_dpg`).

Regenerate (deterministic from the seed): `python -m twinflow_core.data.prompt_sets --out data/prompts`.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np

from twinflow_core.bounds import check_text
from twinflow_core.data import shapes
from twinflow_core.data.shapes import CLASSES, COLORS, EVAL_PREFIX, NUMBER_WORDS, PLURAL, RELATIONS
from twinflow_core.errors import DataError

GENEVAL_DIR = "geneval-shapes"
DPG_DIR = "dpg-shapes"
GENEVAL_FILE = "evaluation_metadata.jsonl"
DPG_CSV = "dpg_bench.csv"
DPG_ITEMS = "items.jsonl"
DPG_COLUMNS = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language"]
DEFAULT_SEED = 43            # GenEval's create_prompts.py default
N_POSITION = 40
N_COLOR_ATTR = 40
N_DPG = 64


def _a(phrase: str) -> str:
    return f"a {phrase}"  # no class or colour of the shapes world starts with a vowel


def geneval_prompts(seed: int = DEFAULT_SEED) -> list[dict]:
    """The geneval-shapes metadata rows: every single object, ordered pair, count and colour, plus
    N_POSITION position and N_COLOR_ATTR colour-attribution prompts drawn without repetition."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for c in CLASSES:
        rows.append({"tag": "single_object", "include": [{"class": c, "count": 1}],
                     "prompt": f"{EVAL_PREFIX} {_a(c)}"})
    for a in CLASSES:
        for b in CLASSES:
            if a != b:
                rows.append({"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                             "prompt": f"{EVAL_PREFIX} {_a(a)} and {_a(b)}"})
    for c in CLASSES:
        for n in (2, 3, 4):
            rows.append({"tag": "counting", "include": [{"class": c, "count": n}],
                         "exclude": [{"class": c, "count": n + 1}],
                         "prompt": f"{EVAL_PREFIX} {NUMBER_WORDS[n]} {PLURAL[c]}"})
    for c in CLASSES:
        for color in COLORS:
            rows.append({"tag": "colors", "include": [{"class": c, "count": 1, "color": color}],
                         "prompt": f"{EVAL_PREFIX} {_a(color + ' ' + c)}"})
    triples = [(a, rel, b) for a in CLASSES for b in CLASSES if a != b for rel in RELATIONS]
    for k in rng.choice(len(triples), size=N_POSITION, replace=False):
        a, rel, b = triples[int(k)]
        rows.append({"tag": "position",
                     "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                     "prompt": f"{EVAL_PREFIX} {_a(a)} {rel} {_a(b)}"})
    combos = [((ca, a), (cb, b)) for a in CLASSES for b in CLASSES if a < b
              for ca in COLORS for cb in COLORS if ca != cb]
    for k in rng.choice(len(combos), size=N_COLOR_ATTR, replace=False):
        x, y = combos[int(k)]
        if rng.random() < 0.5:
            x, y = y, x
        rows.append({"tag": "color_attr",
                     "include": [{"class": x[1], "count": 1, "color": x[0]},
                                 {"class": y[1], "count": 1, "color": y[0]}],
                     "prompt": f"{EVAL_PREFIX} {_a(x[0] + ' ' + x[1])} and {_a(y[0] + ' ' + y[1])}"})
    return rows


def dpg_items(seed: int = DEFAULT_SEED, n: int = N_DPG) -> list[dict]:
    """n dense items (2-4 groups of distinct classes, <= 4 objects, 1-2 relations), unique texts."""
    rng = np.random.default_rng([seed, 1])
    items, seen = [], set()
    while len(items) < n:
        spec = shapes.sample_dense_spec(rng, min_groups=2, min_relations=1)
        if not spec.relations:
            continue
        text = shapes.caption_for("dense", spec, EVAL_PREFIX)
        if text in seen:
            continue
        seen.add(text)
        items.append({
            "item_id": f"shapes-{len(items):03d}",
            "text": text,
            "groups": [{"class": g.cls, "color": g.color, "count": g.count} for g in spec.groups],
            "relations": [[a, rel, b] for a, rel, b in spec.relations],
        })
    return items


def dpg_questions(item: dict) -> list[dict]:
    """The question graph of one item, DPG schema: one root question per group that binds its colour, class
    and count ("Is there a blue circle?", "Are there exactly two blue triangles?"), then each relation
    between two such bound objects ("Is the blue circle below the green square?"), depending on both.

    Deviation from DPG-Bench's own graphs (which ask "Is there a cat?" then "Is the cat black?"): with four
    classes in this world an unrelated image holds the asked-for class most of the time, so a bare existence
    question scored ~80% on someone else's image and held the benchmark's floor at 41.5. Every question here
    names a (colour, class) pair, one of 24, so an unrelated image fails almost all of them (see
    docs/instrument.md), while a picture of the item passes them all."""
    rows: list[dict] = []

    def add(parents, broad, detailed, tup, question):
        rows.append({"proposition_id": len(rows) + 1, "dependency": ",".join(str(p) for p in parents) or "0",
                     "category_broad": broad, "category_detailed": detailed, "tuple": tup,
                     "question_natural_language": question})
        return len(rows)

    root_q, names = [], []
    for g in item["groups"]:
        cls, color, count = g["class"], g["color"], int(g["count"])
        if count == 1:
            name = f"{color} {cls}"
            q = add([], "attribute", "color", f"attribute - color ({cls}, {color})", f"Is there a {name}?")
        else:
            name = f"{color} {PLURAL[cls]}"
            q = add([], "other", "count", f"other - count ({name}, =={count})",
                    f"Are there exactly {NUMBER_WORDS[count]} {name}?")
        root_q.append(q)
        names.append(name)
    for a, rel, b in item["relations"]:
        verb = "are" if int(item["groups"][a]["count"]) > 1 else "is"
        add([root_q[a], root_q[b]], "relation", "spatial", f"relation - spatial ({names[a]}, {names[b]}, {rel})",
            f"{verb.capitalize()} the {names[a]} {rel} the {names[b]}?")
    return rows


def dpg_csv_text(items: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=DPG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for item in items:
        keywords = ", ".join(dict.fromkeys(w for g in item["groups"] for w in (g["color"], g["class"])))
        for q in dpg_questions(item):
            writer.writerow({"item_id": item["item_id"], "text": item["text"], "keywords": keywords, **q})
    return buf.getvalue()


README = """# Evaluation prompt sets of the shapes world (generated; do not edit by hand)

Regenerate with `python -m twinflow_core.data.prompt_sets --out data/prompts` (seed {seed});
tests/test_data_prompts.py checks that these files equal a fresh generation.

## geneval-shapes/evaluation_metadata.jsonl ({n_geneval} prompts)
GenEval's schema, read from github.com/djghosh13/geneval (prompts/create_prompts.py writes
`prompts/evaluation_metadata.jsonl`; evaluation/evaluate_images.py reads it): one JSON object a line,
`{{"tag", "include": [{{"class", "count", "color"?, "position"?: [rel, k]}}], "exclude"?: [...], "prompt"}}`,
keys in that order. Same six tags and wording ("a photo of ..."); counting rows exclude count + 1;
position `[rel, k]` means this group is `rel` include group k. Classes: {classes}; colours (GenEval names): {colors}.
Tag counts: {tag_counts}.
`generation_prompts.txt` lists the prompts one a line, as GenEval's generator reads them.

## dpg-shapes/dpg_bench.csv + prompts/<item_id>.txt ({n_dpg} items, {n_questions} questions)
DPG-Bench's schema, read from github.com/TencentQQGYLab/ELLA (dpg_bench/compute_dpg_bench.py reads
`dpg_bench.csv` with columns `{columns}`; prompts are `prompts/<item_id>.txt`). One row per proposition;
`dependency` lists parent proposition ids ("0" = none); `tuple` is "category - detail (args)".
Categories used: attribute-color ("Is there a blue circle?": colour and class bound), other-count
("Are there exactly two blue triangles?"), relation-spatial between two bound objects; no bare existence
questions (an unrelated image of this 4-class world holds the asked class most of the time). `items.jsonl` is ours, not
DPG's: each item's groups and relations, from which `shapes.render_dpg` renders a satisfying image.
Note: the official script skips the first CSV row (its issue #60); a faithful port must handle that.

## How these prompts are held out from training captions (by construction)
1. Exact prompts: evaluation prompts all start with "a photo of"; training captions use "a photo of",
   "a picture of" or "an image of", and a training caption equal to any prompt here (GenEval prompt or
   DPG text) is rephrased with another prefix. So no evaluation prompt is ever a training caption, while
   every word of every prompt is in the training vocabulary.
2. Colour-attribute combinations: the (colour, class) pairs that the color_attr prompts combine are never
   shown together in one training scene (training redraws such scenes). So color_attr measures binding of
   unseen combinations, as GenEval's rare combinations do.
The prepare stage reads these files (a DVC dependency) to apply both rules; tests/test_data_shapes.py checks them.
"""


def write_prompt_sets(out: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write both prompt sets and the README under `out` (files only replaced when their content changes)."""
    out = Path(out)
    rows = geneval_prompts(seed)
    items = dpg_items(seed)
    files: dict[str, str] = {
        f"{GENEVAL_DIR}/{GENEVAL_FILE}": "".join(json.dumps(r) + "\n" for r in rows),
        f"{GENEVAL_DIR}/generation_prompts.txt": "".join(r["prompt"] + "\n" for r in rows),
        f"{DPG_DIR}/{DPG_CSV}": dpg_csv_text(items),
        f"{DPG_DIR}/{DPG_ITEMS}": "".join(json.dumps(i, sort_keys=True) + "\n" for i in items),
    }
    for item in items:
        files[f"{DPG_DIR}/prompts/{item['item_id']}.txt"] = item["text"] + "\n"
    tags: dict[str, int] = {}
    for r in rows:
        tags[r["tag"]] = tags.get(r["tag"], 0) + 1
    files["README.md"] = README.format(
        seed=seed, n_geneval=len(rows), classes=", ".join(CLASSES), colors=", ".join(COLORS),
        tag_counts=", ".join(f"{k} {v}" for k, v in tags.items()), n_dpg=len(items),
        n_questions=sum(len(dpg_questions(i)) for i in items), columns=",".join(DPG_COLUMNS))
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return out


# ---------------------------------------------------------------- readers


def _require(path: Path) -> Path:
    """`path`, a file the prompt sets' writer makes; a DataError saying how to make it when it is missing."""
    if not path.is_file():
        raise DataError(f"{path}: not found (regenerate with python -m twinflow_core.data.prompt_sets)")
    return path


def _read_rows(path: Path) -> list[dict]:
    """The checked prompt-set rows of a JSON-lines file (blank lines skipped)."""
    _require(path)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {n}: not valid JSON ({err.msg})") from None
            _check_prompt(rows[-1], path, n)
    return rows


def load_geneval_metadata(prompts_dir: str | Path) -> list[dict]:
    return _read_rows(Path(prompts_dir) / GENEVAL_DIR / GENEVAL_FILE)


def _check_prompt(row, path: Path, n: int) -> None:
    """A prompt-set row is an object whose prompt/text is a bounded string (a message quotes only its start)."""
    if not isinstance(row, dict):
        raise DataError(f"{path} line {n}: expected a JSON object")
    for key in ("prompt", "text"):
        if key in row:
            if not isinstance(row[key], str):
                raise DataError(f"{path} line {n}: {key!r} must be a string")
            check_text(row[key], f"{path} line {n}: the {key}")


def load_dpg_items(prompts_dir: str | Path) -> list[dict]:
    """dpg-shapes items with their scene specs (groups, relations), as `shapes.render_dpg` takes them."""
    return _read_rows(Path(prompts_dir) / DPG_DIR / DPG_ITEMS)


def load_holdout(prompts_dir: str | Path) -> shapes.Holdout:
    """What training must not show, read from the prompt files: every GenEval prompt and DPG text, and the
    (colour, class) pairs combined by color_attr prompts."""
    rows = load_geneval_metadata(prompts_dir)
    csv_path = _require(Path(prompts_dir) / DPG_DIR / DPG_CSV)
    with csv_path.open(newline="") as f:
        texts = {r["text"] for r in csv.DictReader(f)}
    prompts = {shapes.normalise_prompt(r["prompt"]) for r in rows} | {shapes.normalise_prompt(t) for t in texts}
    pairs = set()
    for r in rows:
        if r.get("tag") == "color_attr":
            a, b = ((g["color"], g["class"]) for g in r["include"])
            pairs.add(frozenset((a, b)))
    return shapes.Holdout(frozenset(prompts), frozenset(pairs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/prompts")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    print(write_prompt_sets(args.out, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
