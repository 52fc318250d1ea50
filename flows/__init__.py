"""Orchestration layer: stage entry points, Prefect flows, MLflow registry and the `twinflow` command.

This package wires `twinflow_core` (which knows nothing of Prefect, DVC or MLflow) to those tools.
"""
