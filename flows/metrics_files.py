"""The evaluate stage's two metrics files: the scores (metrics/eval.json, DVC's metrics, bitwise the same for the
same inputs) and their wall-clock sibling (metrics/eval.timing.json, untracked). Written by
flows/stages/evaluate.py, read by flows/tracking.py (read_scores)."""

from __future__ import annotations

from pathlib import Path


def is_timing(name: str) -> bool:
    """A wall-clock metric: it differs between two runs of the same inputs."""
    return "throughput/" in name or name == "evaluate/seconds"


def timing_path(metrics_path: str | Path) -> Path:
    """Where the wall-clock metrics of `metrics_path` go: metrics/eval.json -> metrics/eval.timing.json."""
    metrics_path = Path(metrics_path)
    return metrics_path.with_name(f"{metrics_path.stem}.timing.json")
