"""Serve the deployments of prefect.yaml (nightly cron, on-demand) from this process, no work pool needed.

    python -m flows.deployments serve [--start-server] [--only on-demand] [--workdir DIR]

`prefect.yaml` is the one definition: `prefect deploy --all` + a process worker uses it as is, and this
module builds the same deployments from it for `serve`. Cron schedules fire only with a real Prefect server
(the ephemeral one has no scheduler): give PREFECT_API_URL, or --start-server to start one on 127.0.0.1:4200.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from twinflow_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load_specs(path: Path = ROOT / "prefect.yaml") -> list[dict]:
    specs = (yaml.safe_load(path.read_text()) or {}).get("deployments") or []
    if not specs:
        raise ConfigError(f"{path}: no deployments")
    for spec in specs:
        if spec.get("entrypoint") != "flows/pipeline.py:pipeline":
            raise ConfigError(f"{path}: deployment {spec.get('name')!r} has entrypoint {spec.get('entrypoint')!r};"
                              " only flows/pipeline.py:pipeline is served here")
        for sched in spec.get("schedules") or []:
            if not sched.get("timezone"):
                raise ConfigError(f"{path}: deployment {spec['name']!r}: cron {sched.get('cron')!r} needs an "
                                  "explicit timezone")
    return specs


def _concurrency(spec: dict):
    """prefect.yaml `concurrency_limit` (an int, or {limit, collision_strategy}) as Prefect takes it."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    limit = spec.get("concurrency_limit")
    if limit is None or isinstance(limit, int):
        return limit
    return ConcurrencyLimitConfig(limit=int(limit["limit"]), collision_strategy=ConcurrencyLimitStrategy(
        limit.get("collision_strategy", "ENQUEUE")))


def build_deployments(specs: list[dict], workdir: str | None = None):
    """RunnerDeployments of the pipeline flow; `workdir` (the project to run in) becomes a default parameter."""
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    deployments = []
    for spec in specs:
        params = dict(spec.get("parameters") or {})
        if workdir:
            params.setdefault("workdir", str(Path(workdir).resolve()))
        schedules = [Cron(s["cron"], timezone=s["timezone"], active=s.get("active", True))
                     for s in spec.get("schedules") or []]
        deployments.append(pipeline.to_deployment(
            name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
            parameters=params, schedules=schedules or None, concurrency_limit=_concurrency(spec)))
    return deployments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="serve the deployments until interrupted")
    serve.add_argument("--start-server", action="store_true",
                       help="start `prefect server` on 127.0.0.1 (port --port) unless PREFECT_API_URL is set")
    serve.add_argument("--port", type=int, default=4200)
    serve.add_argument("--only", action="append", help="serve only this deployment (repeatable)")
    serve.add_argument("--workdir", default=None, help="project folder the runs use (default: this checkout)")
    args = parser.parse_args(argv)

    specs = [s for s in load_specs() if not args.only or s["name"] in args.only]
    server = None
    if args.start_server and not os.environ.get("PREFECT_API_URL"):
        from flows.servers import start_prefect_server

        home = Path(os.environ.get("PREFECT_HOME", ROOT / ".prefect"))
        api, server = start_prefect_server(home, args.port)
        os.environ["PREFECT_API_URL"] = api
        print(f"Prefect server: {api.removesuffix('/api')} (pid {server.pid})", flush=True)
    if not os.environ.get("PREFECT_API_URL"):
        print("note: no PREFECT_API_URL: runs can be triggered but cron schedules will not fire on the "
              "ephemeral server; use --start-server or `prefect server start`", file=sys.stderr)
    try:
        from prefect import serve as prefect_serve

        prefect_serve(*build_deployments(specs, args.workdir))
    finally:
        if server is not None:
            from flows.servers import stop

            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
