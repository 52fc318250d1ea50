"""`twinflow eval ...`: summarise official benchmark outputs into JSON with project metric names.

twinflow eval geneval-summary results.jsonl        official GenEval summary (per tag, overall, % correct)
twinflow eval dpg-summary dpg-bench_..._results.txt  official DPG summary (score, L1/L2 categories)
twinflow eval dpg-summary ..._detail.txt --csv dpg_bench.csv
                                                   rescore the answers: official rules and corrected ones
twinflow eval dpg-summary answers.jsonl --csv q.csv  the same from the project's answer format
"""

# Lazy imports: numpy, omegaconf
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import json
import sys
from pathlib import Path

from twinflow_core.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="summarise GenEval / DPG-Bench outputs", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    g = sub.add_parser("geneval-summary", help="official GenEval results.jsonl -> summary JSON")
    g.add_argument("path", help="results.jsonl written by the official evaluate_images.py")
    g.add_argument("--out", help="also write the JSON here")
    g.set_defaults(func=_geneval_summary)

    d = sub.add_parser("dpg-summary", help="official DPG results (or answers) -> summary JSON")
    d.add_argument("path", help="*_results.txt, *_detail.txt or answers .jsonl")
    d.add_argument("--csv", help="the DPG question CSV (needed to rescore a detail file or answers)")
    d.add_argument("--out", help="also write the JSON here")
    d.set_defaults(func=_dpg_summary)


def _emit(obj: dict, out: str | None) -> int:
    text = json.dumps(obj, indent=2, sort_keys=False)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


def _geneval_summary(args) -> int:
    from twinflow_core.benchmarks.official import geneval_summary

    return _emit(geneval_summary(args.path), args.out)


def _dpg_summary(args) -> int:
    from twinflow_core.benchmarks import dpg_score, official

    path = Path(args.path)
    if path.suffix == ".txt" and not path.name.endswith("_detail.txt"):
        return _emit(official.parse_dpg_results_txt(path), args.out)
    if not args.csv:
        raise ConfigError(f"dpg-summary {path.name}: rescoring answers needs --csv (the DPG question file)")
    rows = dpg_score.read_csv(args.csv)
    answers = official.parse_dpg_detail(path, rows) if path.suffix == ".txt" else official.read_answers_jsonl(path)
    result = official.dpg_rescore(answers, rows)
    for part in ("official", "corrected"):
        if result[part] is not None:
            result[part].pop("items", None)  # per-image scores make the summary unreadable
    return _emit(result, args.out)
