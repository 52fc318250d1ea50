"""Stage `validate`: a Great Expectations suite on data/prepared/<data.name>/ (its manifest, its shards and its
vocabulary). Writes reports/data/<name>/validation.json (summary metrics) and validation.md (every expectation;
failed ones with example rows). A failed expectation fails the stage: one line on stderr, exit 11 (input data).

    python -m flows.stages.validate [--params params.yaml] [--set validate.max_duplicate_fraction=0.05 ...]

Three tables are checked. rows: the manifest plus derived columns (caption word count, words outside the
vocabulary, pixel hash recomputed from the shards, each caption kind's / label's share); shards: each shard
file readable, its sha256 as meta.json records, its row count and array shape; words: how often each
vocabulary word occurs (coverage).
"""

# Lazy imports: great_expectations, pandas
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from flows.params import load_with_sets
from flows.schema import ValidateConfig, validate_config
from flows.stages._cli import stage_main, stage_parser
from twinflow_core.data.config import DataConfig
from twinflow_core.data.prepared import content_hash, file_sha256, read_manifest, read_meta, read_shard
from twinflow_core.data.vocab import split_words
from twinflow_core.errors import DataError

# ---------------------------------------------------------------- tables


def build_tables(path: Path, meta: dict, manifest, image_size: int):
    """(rows, shards, words) DataFrames: the manifest with derived columns, one row per shard, per word.
    Shard arrays are checked against the configured `image_size` (not only against what meta.json says)."""
    import pandas as pd

    size = image_size
    hash_ok = np.zeros(len(manifest), dtype=bool)
    shard_rows = []
    key = {(int(s), int(r)): i for i, (s, r) in enumerate(zip(manifest["shard"], manifest["row"]))}
    for k, shard in enumerate(meta["shards"]):
        file = path / shard["file"]
        info = {
            "file": shard["file"],
            "exists": file.is_file(),
            "readable": False,
            "sha256_ok": False,
            "rows_ok": False,
            "shape_ok": False,
        }
        if info["exists"]:
            info["sha256_ok"] = file_sha256(file) == shard["sha256"]
            try:
                images = read_shard(file)
                info["readable"] = True
            except DataError:
                images = None
            if images is not None:
                info["rows_ok"] = len(images) == shard["n"] == int((manifest["shard"] == k).sum())
                info["shape_ok"] = images.dtype == np.uint8 and images.shape[1:] == (size, size, 3)
                for r, img in enumerate(images):
                    i = key.get((k, r))
                    if i is not None:
                        hash_ok[i] = content_hash(img) == manifest["content_hash"].iat[i]
        shard_rows.append(info)
    shards = pd.DataFrame(shard_rows, columns=["file", "exists", "readable", "sha256_ok", "rows_ok", "shape_ok"])

    rows = manifest.copy()
    vocab = set(meta.get("vocabulary") or [])
    words = [split_words(c) if isinstance(c, str) else [] for c in rows["caption"]]
    rows["n_words"] = [len(w) for w in words]
    rows["oov_words"] = [sum(x not in vocab for x in w) for w in words]
    rows["hash_ok"] = hash_ok
    # Share of each kind / label relative to an even split: 1.0 means exactly 1/K of the dataset.
    kinds = meta.get("kinds") or sorted(rows["kind"].unique())
    rows["kind_share"] = rows["kind"].map(rows["kind"].value_counts(normalize=True)).astype(float) * len(kinds)
    if meta.get("labeled"):
        n_labels = len(meta.get("classes") or [])
        rows["label_share"] = rows["label"].map(rows["label"].value_counts(normalize=True)).astype(float) * n_labels
    counts: dict[str, int] = {w: 0 for w in sorted(vocab)}
    for w in words:
        for x in set(w):
            if x in counts:
                counts[x] += 1
    word_table = pd.DataFrame({"word": list(counts), "captions": list(counts.values())})
    return rows, shards, word_table


def expectations(meta: dict, cfg: ValidateConfig, image_size: int, shard_total: int) -> dict[str, list]:
    """The suite, per table: a list of expectations, each with a description saying what it checks (the
    description also keeps two equal-looking expectations apart: GE drops exact duplicates)."""
    import great_expectations as gx

    def E(name, description, **kwargs):
        return getattr(gx.expectations, name)(description=description, **kwargs)

    lo, hi = cfg.share_bounds
    kinds = list(meta.get("kinds") or [])
    rows = [
        E("ExpectTableRowCountToEqual", "manifest has meta.json's row count", value=int(meta["n"])),
        E("ExpectTableRowCountToEqual", "manifest rows = images in the shards", value=int(shard_total)),
        E("ExpectColumnValuesToNotBeNull", "every row has an id", column="id"),
        E("ExpectColumnValuesToBeUnique", "ids are unique", column="id"),
        E("ExpectColumnValuesToNotBeNull", "every row has a caption", column="caption"),
        E(
            "ExpectColumnValueLengthsToBeBetween",
            f"captions are non-empty, at most {cfg.max_caption_chars} chars",
            column="caption",
            min_value=1,
            max_value=cfg.max_caption_chars,
        ),
        E(
            "ExpectColumnValuesToBeBetween",
            f"captions have 1..{cfg.max_caption_words} words",
            column="n_words",
            min_value=1,
            max_value=cfg.max_caption_words,
        ),
        E(
            "ExpectColumnValuesToBeBetween",
            "every caption word is in meta.json's vocabulary",
            column="oov_words",
            min_value=0,
            max_value=0,
        ),
        E("ExpectColumnValuesToBeInSet", f"width is {image_size}", column="width", value_set=[image_size]),
        E("ExpectColumnValuesToBeInSet", f"height is {image_size}", column="height", value_set=[image_size]),
        E("ExpectColumnValuesToBeInSet", "mode is RGB", column="mode", value_set=["RGB"]),
        E("ExpectColumnValuesToBeBetween", "pixel_min in 0..255", column="pixel_min", min_value=0, max_value=255),
        E("ExpectColumnValuesToBeBetween", "pixel_max in 0..255", column="pixel_max", min_value=0, max_value=255),
        E(
            "ExpectColumnValuesToBeBetween",
            f"no blank image (pixel_std >= {cfg.min_pixel_std})",
            column="pixel_std",
            min_value=cfg.min_pixel_std,
        ),
        E(
            "ExpectColumnValuesToBeInSet",
            "the pixels in the shards hash to the manifest's content_hash",
            column="hash_ok",
            value_set=[True],
        ),
        E(
            "ExpectColumnProportionOfUniqueValuesToBeBetween",
            f"duplicate images are at most {cfg.max_duplicate_fraction:.1%}",
            column="content_hash",
            min_value=1.0 - cfg.max_duplicate_fraction,
        ),
        E("ExpectColumnValuesToBeInSet", "caption kinds are the source's kinds", column="kind", value_set=kinds),
        E("ExpectColumnDistinctValuesToContainSet", "every caption kind occurs", column="kind", value_set=kinds),
        E(
            "ExpectColumnValuesToBeBetween",
            f"each caption kind's share is {lo}x..{hi}x an even split",
            column="kind_share",
            min_value=lo,
            max_value=hi,
        ),
    ]
    if meta.get("labeled"):
        labels = list(range(len(meta["classes"])))
        rows += [
            E("ExpectColumnValuesToBeInSet", f"labels are 0..{len(labels) - 1}", column="label", value_set=labels),
            E("ExpectColumnDistinctValuesToContainSet", "every label occurs", column="label", value_set=labels),
            E(
                "ExpectColumnValuesToBeBetween",
                f"each label's share is {lo}x..{hi}x an even split",
                column="label_share",
                min_value=lo,
                max_value=hi,
            ),
        ]
    shards = [
        E("ExpectColumnValuesToBeInSet", d, column=c, value_set=[True])
        for c, d in (
            ("exists", "every shard listed in meta.json exists"),
            ("readable", "every shard is a readable npz"),
            ("sha256_ok", "every shard's sha256 is the one meta.json records"),
            ("rows_ok", "every shard holds as many images as meta.json and the manifest say"),
            ("shape_ok", f"every shard is uint8 (n, {image_size}, {image_size}, 3)"),
        )
    ]
    words = [
        E(
            "ExpectColumnValuesToBeBetween",
            f"at least {cfg.min_vocab_coverage:.0%} of the vocabulary occurs",
            column="captions",
            min_value=1,
            mostly=cfg.min_vocab_coverage,
        )
    ]
    return {"rows": rows, "shards": shards, "words": words}


def _plain(value):
    """JSON-safe copy of a GE result value (numpy scalars, tuples, sets)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def run_suite(tables: dict, suite: dict) -> list[dict]:
    """Validate each table with its expectations; one plain dict per expectation result."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    index_column = {"rows": "id", "shards": "file", "words": "word"}
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("prepared")
    out = []
    for table, items in suite.items():
        frame = tables[table]
        batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
        gx_suite = context.suites.add(gx.ExpectationSuite(name=f"prepared-{table}"))
        for expectation in items:
            gx_suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"prepared-{table}", data=batch_def, suite=gx_suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index_column[table]]},
        )
        for r in result.results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
            res = r.result or {}
            examples = list(res.get("unexpected_index_list") or [])[:5]
            if table == "rows" and kwargs.get("column") == "content_hash" and not r.success:
                dup = frame[frame["content_hash"].duplicated(keep=False)]
                examples = dup[["id", "content_hash"]].head(5).to_dict("records")
            if table == "rows":  # show the caption beside the offending row
                captions = dict(zip(frame["id"], frame["caption"]))
                examples = [{**e, "caption": captions.get(e.get("id"))} for e in examples]
            out.append(
                _plain(
                    {
                        "table": table,
                        "expectation": cfg.type,
                        "description": cfg.description,
                        "kwargs": kwargs,
                        "success": bool(r.success),
                        "observed": res.get("observed_value"),
                        "unexpected_count": res.get("unexpected_count"),
                        "examples": examples,
                    }
                )
            )
    return out


# ---------------------------------------------------------------- reports


def write_reports(out_dir: Path, name: str, path: Path, results: list[dict], summary: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = [r for r in results if not r["success"]]
    metrics = {
        **summary,
        "success": not failed and not summary.get("structure_error"),
        "expectations": len(results),
        "failed": len(failed),
        "failed_expectations": [f"{r['table']}: {r['expectation']}({r['kwargs'].get('column', '')})" for r in failed],
    }
    json_path = out_dir / "validation.json"
    json_path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    lines = [
        f"# Validation of {path}",
        "",
        f"**{'PASSED' if metrics['success'] else 'FAILED'}**: {len(results) - len(failed)} of "
        f"{len(results)} expectations met (Great Expectations suite, flows/stages/validate.py).",
        "",
    ]
    if summary.get("structure_error"):
        lines += [f"Could not check the dataset: {summary['structure_error']}", ""]
    for key in ("n", "duplicate_fraction", "vocab_coverage"):
        if key in summary:
            lines.append(f"- {key}: {summary[key]}")
    if failed:
        lines += ["", "## Failed expectations", ""]
        for r in failed:
            lines += [
                f"### {r['table']}: `{r['expectation']}` on `{r['kwargs'].get('column', '(table)')}`",
                f"{r['description']}. Arguments: `{json.dumps(r['kwargs'])}`.",
                f"Observed: {r['observed']}; unexpected rows: {r['unexpected_count']}.",
                "",
            ]
            if r["examples"]:
                lines += ["Example rows:", ""] + [f"- `{json.dumps(e)}`" for e in r["examples"]] + [""]
    lines += [
        "",
        "## All expectations",
        "",
        "| table | expectation | column | ok | observed / unexpected | what |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        seen = r["observed"] if r["observed"] is not None else r["unexpected_count"]
        lines.append(
            f"| {r['table']} | {r['expectation']} | {r['kwargs'].get('column', '')} | "
            f"{'yes' if r['success'] else '**NO**'} | {seen} | {r['description']} |"
        )
    md_path = out_dir / "validation.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def validate(params: dict, root: str | Path = ".", dataset: str | Path | None = None) -> tuple[bool, Path, dict]:
    """Validate the prepared dataset; returns (passed, report path, summary metrics)."""

    data_cfg = DataConfig.from_dict(params.get("data"))
    cfg = validate_config(params.get("validate"))
    root = Path(root)
    path = Path(dataset) if dataset is not None else root / "data" / "prepared" / data_cfg.name
    out_dir = root / "reports" / "data" / data_cfg.name
    summary: dict = {"dataset": data_cfg.name}
    try:
        meta = read_meta(path)
        manifest = read_manifest(path)
    except DataError as err:
        summary["structure_error"] = str(err)
        write_reports(out_dir, data_cfg.name, path, [], summary)
        return False, out_dir / "validation.md", summary
    rows, shards, words = build_tables(path, meta, manifest, data_cfg.image_size)
    summary.update(
        n=int(len(rows)),
        duplicate_fraction=round(float(rows["content_hash"].duplicated().mean()) if len(rows) else 0.0, 6),
        vocab_coverage=round(float((words["captions"] > 0).mean()) if len(words) else 0.0, 4),
    )
    shard_total = int(sum(s["n"] for s in meta["shards"]))
    suite = expectations(meta, cfg, data_cfg.image_size, shard_total)
    results = run_suite({"rows": rows, "shards": shards, "words": words}, suite)
    write_reports(out_dir, data_cfg.name, path, results, summary)
    summary["failed"] = [r for r in results if not r["success"]]
    return not summary["failed"], out_dir / "validation.md", summary


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("validate", __doc__, "validate.max_duplicate_fraction=0.05", root=True).parse_args(argv)

    def body() -> None:
        params = load_with_sets(Path(args.root) / args.params, args.overrides)
        passed, report, summary = validate(params, args.root)
        if not passed:
            if summary.get("structure_error"):
                what = summary["structure_error"]
            else:
                names = [f"{r['expectation']}({r['kwargs'].get('column', '')})" for r in summary["failed"]]
                what = f"{len(names)} expectation(s) failed: {', '.join(names)}"
            raise DataError(f"{summary['dataset']}: {what}; see {report}")
        print(f"validate: {summary['dataset']}: all expectations met ({summary['n']} rows); report {report}")

    return stage_main("validate", body)


if __name__ == "__main__":
    sys.exit(main())
