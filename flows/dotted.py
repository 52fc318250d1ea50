"""Dotted names of a nested params tree: {'a': {'b': 1}} -> {'a.b': 1}, as override keys and MLflow params
name them. Below everything that reads params (the stages, the up-front check, tracking, model sources)."""

from __future__ import annotations

from typing import Any


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
