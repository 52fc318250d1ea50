"""The deployments of prefect.yaml (nightly cron, on-demand): served from this process, or registered to a
work pool that `prefect worker start --pool NAME` workers pick runs from.

    python -m flows.deployments serve [--start-server] [--only on-demand] [--workdir DIR]
    python -m flows.deployments deploy [--pool NAME] [--code DIR | --git-url URL [--git-branch B]] [--workdir DIR]

`prefect.yaml` is the one definition: `prefect deploy --all` + a process worker uses it as is, and this
module builds the same deployments from it for `serve` and `deploy`. `deploy` says where a worker finds the
code: a folder on the worker's machine (--code, a set_working_directory pull step; default this checkout) or a
git repository cloned for every run (--git-url, a git_clone pull step, as infra/prefect.team.yaml does).
Cron schedules fire only with a real Prefect server (the ephemeral one has no scheduler): give
PREFECT_API_URL, or --start-server (serve) to start one on 127.0.0.1:4200.
"""

# Lazy imports: numpy, omegaconf, prefect, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from flows.servers import check_prefect_login, start_prefect_server, stop
from twinflow_core.errors import ConfigError, TwinflowError

ROOT = Path(__file__).resolve().parents[1]


def load_specs(path: Path = ROOT / "prefect.yaml") -> list[dict]:
    specs = (yaml.safe_load(path.read_text()) or {}).get("deployments") or []
    if not specs:
        raise ConfigError(f"{path}: no deployments")
    for spec in specs:
        if spec.get("entrypoint") != "flows/pipeline.py:pipeline":
            raise ConfigError(
                f"{path}: deployment {spec.get('name')!r} has entrypoint {spec.get('entrypoint')!r};"
                " only flows/pipeline.py:pipeline is served here"
            )
        for sched in spec.get("schedules") or []:
            if not sched.get("timezone"):
                raise ConfigError(
                    f"{path}: deployment {spec['name']!r}: cron {sched.get('cron')!r} needs an explicit timezone"
                )
    return specs


def _concurrency(spec: dict):
    """prefect.yaml `concurrency_limit` (an int, or {limit, collision_strategy}) as Prefect takes it."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    limit = spec.get("concurrency_limit")
    if limit is None or isinstance(limit, int):
        return limit
    return ConcurrencyLimitConfig(
        limit=int(limit["limit"]),
        collision_strategy=ConcurrencyLimitStrategy(limit.get("collision_strategy", "ENQUEUE")),
    )


def build_deployments(specs: list[dict], workdir: str | None = None):
    """RunnerDeployments of the pipeline flow; `workdir` (the project to run in) becomes a default parameter."""
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    deployments = []
    for spec in specs:
        params = dict(spec.get("parameters") or {})
        if workdir:
            params.setdefault("workdir", str(Path(workdir).resolve()))
        schedules = [
            Cron(s["cron"], timezone=s["timezone"], active=s.get("active", True)) for s in spec.get("schedules") or []
        ]
        deployments.append(
            pipeline.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=params,
                schedules=schedules or None,
                concurrency_limit=_concurrency(spec),
            )
        )
    return deployments


def code_storage(code: str | None = None, git_url: str | None = None, git_branch: str | None = None):
    """Where a worker gets the code of a run: Prefect's own storage classes, whose pull step the deployment
    carries (LocalStorage -> set_working_directory, GitRepository -> git_clone, then the run starts there)."""
    from prefect.runner.storage import GitRepository, LocalStorage

    if git_url:
        if code:
            raise ConfigError("deploy: give --code or --git-url, not both")
        return GitRepository(url=git_url, branch=git_branch or None)
    folder = Path(code or ROOT).resolve()
    if not (folder / "flows" / "pipeline.py").is_file():
        raise ConfigError(f"deploy --code {folder}: no flows/pipeline.py there (the folder must hold this project)")
    return LocalStorage(str(folder))


def deploy(
    specs: list[dict], pool: str | None, storage, workdir: str | None = None, pool_type: str = "process"
) -> list[str]:
    """Register the deployments to their work pool (`pool`, else the one prefect.yaml names), creating a pool
    of `pool_type` that does not exist yet; returns "flow/deployment -> pool" lines."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    done = []
    with get_client(sync_client=True) as client:
        for spec, deployment in zip(specs, build_deployments(specs, workdir)):
            name = pool or (spec.get("work_pool") or {}).get("name")
            if not name:
                raise ConfigError(f"deployment {spec['name']!r}: no work pool (give --pool or work_pool.name)")
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(work_pool=WorkPoolCreate(name=name, type=pool_type))
            deployment.storage = storage
            deployment.entrypoint = spec["entrypoint"]  # relative to the code folder the pull step enters
            deployment.apply(work_pool_name=name)
            done.append(f"{deployment.flow_name}/{deployment.name} -> pool {name}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="serve the deployments until interrupted")
    serve.add_argument(
        "--start-server",
        action="store_true",
        help="start `prefect server` on 127.0.0.1 (port --port) unless PREFECT_API_URL is set",
    )
    serve.add_argument("--port", type=int, default=4200)
    serve.add_argument("--only", action="append", help="serve only this deployment (repeatable)")
    serve.add_argument("--workdir", default=None, help="project folder the runs use (default: this checkout)")
    dep = sub.add_parser(
        "deploy", help="register the deployments to a work pool (run them with `prefect worker start --pool NAME`)"
    )
    dep.add_argument("--pool", default=None, help="work pool (default: the one prefect.yaml names)")
    dep.add_argument("--pool-type", default="process", help="type of a pool created here (default process)")
    where = dep.add_mutually_exclusive_group()
    where.add_argument("--code", default=None, help="project folder on the worker's machine (default: this one)")
    where.add_argument("--git-url", default=None, help="git repository every run clones instead")
    dep.add_argument("--git-branch", default=None)
    dep.add_argument("--only", action="append", help="deploy only this deployment (repeatable)")
    dep.add_argument("--workdir", default=None, help="project folder the runs use (default: the code folder)")
    args = parser.parse_args(argv)

    specs = [s for s in load_specs() if not args.only or s["name"] in args.only]
    if args.action == "deploy":
        if not os.environ.get("PREFECT_API_URL"):
            raise SystemExit("deploy: set PREFECT_API_URL to the Prefect server the workers poll")

        try:
            check_prefect_login()  # a refused login is one line, not a traceback from the first API call
        except TwinflowError as err:
            raise SystemExit(f"deploy: {err}") from None
        storage = code_storage(args.code, args.git_url, args.git_branch)
        for line in deploy(specs, args.pool, storage, args.workdir, args.pool_type):
            print(line, flush=True)
        return 0
    server = None
    if args.start_server and not os.environ.get("PREFECT_API_URL"):
        home = Path(os.environ.get("PREFECT_HOME", ROOT / ".prefect"))
        api, server = start_prefect_server(home, args.port)
        os.environ["PREFECT_API_URL"] = api
        print(f"Prefect server: {api.removesuffix('/api')} (pid {server.pid})", flush=True)
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "note: no PREFECT_API_URL: runs can be triggered but cron schedules will not fire on the "
            "ephemeral server; use --start-server or `prefect server start`",
            file=sys.stderr,
        )
    try:
        from prefect import serve as prefect_serve

        prefect_serve(*build_deployments(specs, args.workdir))
    finally:
        if server is not None:
            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
