"""Official GenEval / DPG-Bench backends: file layouts, the scorer runner, parsers of their outputs, and
`run_official`, which samples a generator on the official prompt sets and scores it through all of these.

The official scorers (Mask2Former + CLIP; mPLUG VQA) need a CUDA GPU and an old, separate environment, so
they are never imported here: `run_geneval` / `run_dpg` call them as subprocesses with the configured
checkout, python and weights, after checking that a GPU is visible to that python. Their outputs are
parsed into project metric names (`geneval/overall`, `dpg/score`, ...) by the same pure scoring code
the embedded twins use (`geneval_score`, `dpg_score`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from twinflow_core.benchmarks import dpg_score, geneval_score
from twinflow_core.benchmarks.evaluate import generate_set
from twinflow_core.benchmarks.protocol import Setting
from twinflow_core.errors import BenchmarkOutputError, ConfigError, DataError

# ----------------------------------------------------------------------------------------------- layouts


def write_geneval_layout(
    root: str | Path, metadata: Sequence[Mapping], images: Sequence[np.ndarray], grid: bool = False
) -> Path:
    """GenEval's input layout: `<root>/<00000>/metadata.jsonl` (the prompt's JSON object on one line) and
    `<root>/<00000>/samples/0000.png...` (images[i]: uint8 (K,H,W,3), K images of prompt i)."""

    if len(metadata) != len(images):
        raise DataError(f"GenEval layout: {len(metadata)} prompts but {len(images)} image sets")
    root = Path(root)
    for i, (meta, imgs) in enumerate(zip(metadata, images)):
        folder = root / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(dict(meta)) + "\n")
        for j, img in enumerate(imgs):
            Image.fromarray(np.asarray(img, dtype=np.uint8)).save(folder / "samples" / f"{j:04d}.png")
        if grid:
            Image.fromarray(tile_grid(imgs)).save(folder / "grid.png")
    return root


def tile_grid(images: Sequence[np.ndarray], ncol: int = 2) -> np.ndarray:
    """Tiles side by side, row-major, no padding (DPG's 2x2 layout: tile k at (k % 2, k // 2))."""
    imgs = np.asarray(images, dtype=np.uint8)
    n, h, w, c = imgs.shape
    nrow = -(-n // ncol)
    out = np.zeros((nrow * h, ncol * w, c), np.uint8)
    for k, img in enumerate(imgs):
        r, col = divmod(k, ncol)
        out[r * h : (r + 1) * h, col * w : (col + 1) * w] = img
    return out


def write_dpg_layout(root: str | Path, item_ids: Sequence[str], images: Sequence[np.ndarray]) -> Path:
    """DPG's input layout: one `<item_id>.png` per prompt, its 4 images tiled 2x2 (tile size = the
    scorer's `--resolution`)."""

    if len(item_ids) != len(images):
        raise DataError(f"DPG layout: {len(item_ids)} items but {len(images)} image sets")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for item_id, imgs in zip(item_ids, images):
        if len(imgs) != 4:
            raise DataError(f"DPG layout: item {item_id} has {len(imgs)} images, the protocol needs 4")
        Image.fromarray(tile_grid(imgs)).save(root / f"{item_id}.png")
    return root


def split_dpg_grid(grid: np.ndarray, resolution: int, pic_num: int = 4) -> list[np.ndarray]:
    """The official crops of a DPG grid: (0,0), (r,0), (0,r), (r,r), the first `pic_num`."""
    corners = [(0, 0), (resolution, 0), (0, resolution), (resolution, resolution)][:pic_num]
    return [grid[y : y + resolution, x : x + resolution] for x, y in corners]


# ----------------------------------------------------------------------------------------------- parsers


def _lines(path: Path) -> list[str]:
    """The lines of a benchmark output file; a byte that is not UTF-8 is named by line, not a traceback."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BenchmarkOutputError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x})") from None


def read_geneval_results(path: str | Path) -> list[dict]:
    """Rows of an official results.jsonl (pandas records, one JSON object per line)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkOutputError(f"GenEval results not found: {path}")
    rows = []
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkOutputError(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not {"tag", "correct", "metadata"} <= row.keys():
            raise BenchmarkOutputError(f"{path}:{n}: a GenEval result row needs tag, correct and metadata")
        rows.append(row)
    return rows


def geneval_summary(path: str | Path) -> dict:
    """The official summary of a results.jsonl, plus its project metric names under `metrics`."""
    rows = read_geneval_results(path)
    try:
        summary = geneval_score.summarize(rows)
    except DataError as err:
        raise BenchmarkOutputError(f"{path}: {err}") from None
    summary["metrics"] = geneval_score.summary_metrics(summary, "geneval")
    return summary


_CROP = re.compile(r"^(?P<path>.*?), (?P<crop>\(\d+, \d+, \d+, \d+\)), (?P<rest>.*)$")


def parse_dpg_results_txt(path: str | Path) -> dict:
    """The official `*_results.txt`: per-image lines `path, tile scores..., mean` and the closing block
    (L1 / L2 category scores, `DPG-Bench score: x`)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkOutputError(f"DPG results not found: {path}")
    images: dict[str, list[float]] = {}
    l1: dict[str, float] = {}
    l2: dict[str, float] = {}
    section, score = None, None
    for n, line in enumerate(_lines(path), start=1):
        if line.startswith("L1 category scores"):
            section = l1
        elif line.startswith("L2 category scores"):
            section = l2
        elif line.startswith("\t") and section is not None and ":" in line:
            name, value = line.strip().rsplit(":", 1)
            section[name.strip()] = _float(value, path, n)
        elif line.startswith("DPG-Bench score:"):
            score = _float(line.split(":", 1)[1], path, n)
        elif line.startswith(("Model:", "Image path:", "Save results to:")) or not line.strip():
            section = None
        elif ", " in line:
            parts = line.split(", ")
            images[os.path.basename(parts[0]).split(".")[0]] = [_float(v, path, n) for v in parts[1:]]
    if score is None:
        raise BenchmarkOutputError(f"{path}: no 'DPG-Bench score:' line (did the official run finish?)")
    recomputed = 100.0 * float(np.mean([v[-1] for v in images.values()])) if images else None
    metrics = dpg_score.summary_metrics({"score": score, "l1": l1, "l2": l2}, None, "dpg")
    return {
        "score": score,
        "l1": l1,
        "l2": l2,
        "n_images": len(images),
        "score_from_image_lines": recomputed,
        "metrics": metrics,
    }


def parse_dpg_detail(path: str | Path, rows: Sequence[dpg_score.Question]) -> dict[str, list[dict[int, str]]]:
    """Answers from the official `*_detail.txt` (`path, (x0, y0, x1, y1), question, answer` per line), mapped
    back to proposition ids by question text within the item (repeats taken in CSV order)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkOutputError(f"DPG detail file not found: {path}")
    # the questions the official script asks (its first CSV row is never asked), in the order it asks them: a
    # question whose text repeats the skipped row's maps to its own id, not to the skipped one
    by_item = {item: list(qs.values()) for item, qs in dpg_score.group_questions(rows, "official").items()}
    tiles: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        m = _CROP.match(line)
        if not m or ", " not in m["rest"]:
            raise BenchmarkOutputError(f"{path}:{n}: not a DPG detail line")
        question, answer = m["rest"].rsplit(", ", 1)
        item = os.path.basename(m["path"]).split(".")[0]
        # the answer exactly as written: officially 'yes ' (a trailing space) is not 'yes', so it scores 0
        tiles.setdefault(item, {}).setdefault(m["crop"], []).append((question, answer))
    answers: dict[str, list[dict[int, str]]] = {}
    for item, crops in tiles.items():
        questions = by_item.get(item, [])
        answers[item] = []
        for crop in sorted(crops, key=lambda c: tuple(int(v) for v in c.strip("()").split(", "))[::-1]):
            pending = list(questions)
            tile: dict[int, str] = {}
            for question, answer in crops[crop]:
                hit = next((q for q in pending if q.question == question), None)
                if hit is not None:
                    pending.remove(hit)
                    tile[hit.proposition_id] = answer
            answers[item].append(tile)
    return answers


def dpg_rescore(answers: Mapping[str, Sequence[Mapping[int, str]]], rows: Sequence[dpg_score.Question]) -> dict:
    """Both rule sets on the same answers. Images lacking an answer for some question (the official detail
    never holds one for the skipped first row) are listed under `corrected.incomplete` and left out of
    the corrected numbers only."""
    official = dpg_score.summarize(rows, answers, "official")
    grouped = dpg_score.group_questions(rows, "corrected")
    # corrected rules score only images with an answer for every question and every parent present; the others
    # are listed, never a reason to stop (the official script scores the rest and so must this)
    complete = {
        k: v
        for k, v in answers.items()
        if k in grouped
        and all(set(grouped[k]) <= set(t) for t in v)
        and all(p == 0 or p in grouped[k] for q in grouped[k].values() for p in q.dependency)
    }
    corrected = dpg_score.summarize(rows, complete, "corrected") if complete else None
    out = {
        "official": official,
        "corrected": corrected,
        "metrics": dpg_score.summary_metrics(official, corrected, "dpg"),
    }
    if corrected is not None:
        corrected["incomplete"] = sorted(set(answers) - set(complete))
    return out


def read_answers_jsonl(path: str | Path) -> dict[str, list[dict[int, str]]]:
    """The project's answer format: one JSON object per answer, {item_id, tile, proposition_id, answer}."""
    path = Path(path)
    out: dict[str, dict[int, dict[int, str]]] = {}
    for n, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out.setdefault(str(r["item_id"]), {}).setdefault(int(r["tile"]), {})[int(r["proposition_id"])] = str(
                r["answer"]
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise BenchmarkOutputError(f"{path}:{n}: bad answer row ({err})") from None
    return {item: [tiles[t] for t in sorted(tiles)] for item, tiles in out.items()}


def _float(text: str, path: Path, n: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise BenchmarkOutputError(f"{path}:{n}: expected a number, got {text.strip()!r}") from None


# ----------------------------------------------------------------------------------------------- runner


@dataclass
class OfficialScorer:
    """Where an official scorer lives. `command` is a list of strings with {python}, {checkout},
    {weights}, {imagedir}, {outfile}, {resolution}, {pic_num}, {csv} placeholders; `env` is added to the
    environment (e.g. MODELSCOPE_CACHE); `require_gpu` runs `gpu_check` in that python first."""

    checkout: str
    python: str = "python"
    weights: str = ""
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    require_gpu: bool = True
    gpu_check: list[str] = field(
        default_factory=lambda: ["{python}", "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"]
    )
    timeout_s: float = 24 * 3600

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> OfficialScorer:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        if not d.get("checkout"):
            raise ConfigError(f"{where}.checkout: path to the official checkout is required")
        return cls(**dict(d))


GENEVAL_COMMAND = [
    "{python}",
    "{checkout}/evaluation/evaluate_images.py",
    "{imagedir}",
    "--outfile",
    "{outfile}",
    "--model-path",
    "{weights}",
]
DPG_COMMAND = [
    "{python}",
    "-m",
    "accelerate.commands.launch",
    "--num_processes",
    "1",
    "{checkout}/dpg_bench/compute_dpg_bench.py",
    "--image-root-path",
    "{imagedir}",
    "--resolution",
    "{resolution}",
    "--pic-num",
    "{pic_num}",
    "--vqa-model",
    "mplug",
    "--csv",
    "{csv}",
    "--res-path",
    "{outfile}",
]


def _run(scorer: OfficialScorer, name: str, default: list[str], values: Mapping[str, str]) -> None:
    checkout = Path(scorer.checkout)
    if not checkout.is_dir():
        raise ConfigError(f"official {name}: checkout not found: {checkout}")
    fill = {"python": scorer.python, "checkout": str(checkout), "weights": scorer.weights, **values}
    env = {**os.environ, **{k: str(v) for k, v in scorer.env.items()}}
    if scorer.require_gpu:
        check = [a.format(**fill) for a in scorer.gpu_check]
        try:
            ok = subprocess.run(check, env=env, capture_output=True, timeout=300).returncode == 0
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ConfigError(f"official {name}: cannot run its python {scorer.python!r} ({err})") from None
        if not ok:
            raise ConfigError(
                f"official {name} needs a CUDA GPU, and {scorer.python} sees none "
                f"(the script asserts CUDA); run it on a GPU machine or use the embedded benchmark"
            )
    cmd = [a.format(**fill) for a in (scorer.command or default)]
    try:
        proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=scorer.timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"official {name}: could not run {cmd[0]!r} ({err})") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"official {name} failed (exit {proc.returncode}): {tail[0]}")


def run_geneval(scorer: OfficialScorer, imagedir: str | Path, outfile: str | Path) -> dict:
    """Run the official GenEval scorer on a written layout, then summarise its results.jsonl."""
    outfile = Path(outfile).resolve()
    outfile.parent.mkdir(parents=True, exist_ok=True)
    _run(scorer, "GenEval", GENEVAL_COMMAND, {"imagedir": str(Path(imagedir).resolve()), "outfile": str(outfile)})
    return geneval_summary(outfile)


def run_dpg(
    scorer: OfficialScorer,
    imagedir: str | Path,
    outfile: str | Path,
    csv_path: str | Path,
    resolution: int,
    pic_num: int = 4,
) -> dict:
    """Run the official DPG scorer on a written layout; parse its results (and, when its detail file
    exists, rescore the answers under both rule sets)."""
    outfile = Path(outfile).resolve()
    outfile.parent.mkdir(parents=True, exist_ok=True)
    _run(
        scorer,
        "DPG-Bench",
        DPG_COMMAND,
        {
            "imagedir": str(Path(imagedir).resolve()),
            "outfile": str(outfile),
            "resolution": str(resolution),
            "pic_num": str(pic_num),
            "csv": str(Path(csv_path).resolve()),
        },
    )
    result = parse_dpg_results_txt(outfile)
    detail = outfile.with_name(outfile.name.replace(".txt", "_detail.txt"))
    if detail.is_file():
        rows = dpg_score.read_csv(csv_path)
        result["rescored"] = dpg_rescore(parse_dpg_detail(detail, rows), rows)
    return result


# ----------------------------------------------------------------------------------------- generate and score


def run_official(generator, official: dict, nfe: Sequence[int], workdir: str | Path, seed: int = 0) -> dict[str, float]:
    """Generate the official prompt sets, write their layouts, run the configured official scorers and return
    `geneval/...@<n>nfe` and `dpg/...@<n>nfe` metrics. `official` is the `evaluate.official` section:
    {enabled, geneval: {checkout, python, weights, ..., prompts?, images_per_prompt?, max_prompts?},
     dpg: {checkout, python, ..., csv?, prompts_dir?, resolution?, max_items?}}; either part may be absent."""
    workdir = Path(workdir)
    metrics: dict[str, float] = {}
    known = {"enabled", "geneval", "dpg"}
    if set(official) - known:
        raise ConfigError(f"evaluate.official: unknown keys {sorted(set(official) - known)}")
    own = ("prompts", "images_per_prompt", "max_prompts", "csv", "prompts_dir", "resolution", "max_items")
    if official.get("geneval"):
        g = dict(official["geneval"])
        opts = {k: g.pop(k) for k in own if k in g}
        scorer = OfficialScorer.from_dict(g, "evaluate.official.geneval")
        path = Path(opts.get("prompts") or Path(scorer.checkout) / "prompts" / "evaluation_metadata.jsonl")
        if not path.is_file():
            raise ConfigError(f"evaluate.official.geneval.prompts: {path} not found")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = rows[: opts["max_prompts"]] if opts.get("max_prompts") else rows
        k = int(opts.get("images_per_prompt", 4))
        for n in nfe:
            s = Setting(f"{n}nfe", n, "few")
            imgs, _ = generate_set(
                generator, [r["prompt"] for r in rows for _ in range(k)], s, seed, 64, f"geneval@{s.label}"
            )
            layout = write_geneval_layout(
                workdir / f"geneval-{s.label}", rows, imgs.reshape(len(rows), k, *imgs.shape[1:])
            )
            summary = run_geneval(scorer, layout, workdir / f"geneval-{s.label}-results.jsonl")
            metrics.update(geneval_score.summary_metrics(summary, "geneval", f"@{s.label}"))
    if official.get("dpg"):
        d = dict(official["dpg"])
        opts = {k: d.pop(k) for k in own if k in d}
        scorer = OfficialScorer.from_dict(d, "evaluate.official.dpg")
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
            layout = write_dpg_layout(workdir / f"dpg-{s.label}", items, imgs.reshape(len(items), 4, *imgs.shape[1:]))
            res = run_dpg(
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
