"""`twinflow models`: what release managers do with registered generators.

    twinflow models list [NAME]                       versions, scores, verdicts, aliases, lineage
    twinflow models promote NAME VERSION              re-checks the gate, then moves `champion`; on a team
                                                      server (NAME-production exists) it copies VERSION into
                                                      NAME-production and moves `champion` there (a release
                                                      manager's account; infra/README.md, flows/release.py)
    twinflow models promote NAME VERSION --force --reason "..."   a failing version, recorded in tags
    twinflow models rollback NAME                     `champion` back to the previous champion (of
                                                      NAME-production where it exists)
    twinflow models release NAME VERSION              promote into NAME-production (an error where it does not
                                                      exist)
    twinflow models setup NAME --pipeline A --release B   (the server's admin, once) reserve the model, production,
                                                      lock and experiment names for the accounts that write them
    twinflow models reproduce NAME VERSION DIR        the version's run (its git ref) checked out in DIR,
                                                      its outputs `dvc pull`ed: `dvc status` there is clean

A refused login or permission is one line naming the account (exit 14).
Promote, rollback and the pipeline's own champion move take the model's release lock (flows/release_lock.py):
concurrent actions run one after another, each appending an `audit.<seq>` record (who, when, why, the gate
verdict, the previous champion) to the registered model's tags.

The store is the pipeline's: --tracking-uri, else $MLFLOW_TRACKING_URI, else params.yaml
`register.tracking_uri`, else sqlite:///<project>/mlflow.db. The gate comes from params.yaml `gate:`.
"""

# Lazy imports: mlflow, numpy, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from flows import access, dvc_ops, git, registry, release, tracking, workspace
from flows.gating import GateConfig
from flows.params import load_params, section
from twinflow_core.errors import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list, promote and roll back registered generators", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (sqlite:///... or http://host:port)")
    parser.add_argument("--params", default="params.yaml", help="params.yaml with the gate (default: ./params.yaml)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="versions with scores, verdicts, aliases and lineage")
    ls.add_argument("name", nargs="?", help="one registered model (default: all)")
    pr = sub.add_parser("promote", help="make VERSION champion (gate re-checked)")
    pr.add_argument("name")
    pr.add_argument("version")
    pr.add_argument("--force", action="store_true", help="promote even if the gate fails (needs --reason)")
    pr.add_argument("--reason", default=None, help="why; recorded on the version")
    rb = sub.add_parser("rollback", help="champion back to the previous champion")
    rb.add_argument("name")
    rb.add_argument("--reason", default=None, help="why; recorded in the model's audit trail")
    rl = sub.add_parser("release", help="copy VERSION into NAME-production as its champion (release managers)")
    rl.add_argument("name")
    rl.add_argument("version")
    su = sub.add_parser("setup", help="(admin, once per model) reserve NAME's names for the accounts that write them")
    su.add_argument("name")
    su.add_argument("--pipeline", required=True, help="the pipeline's (worker's) MLflow account")
    su.add_argument("--release", required=True, help="the release managers' MLflow account")
    su.add_argument(
        "--experiment", default=None, help="the pipeline's experiment (default: params.yaml register.experiment)"
    )
    rp = sub.add_parser("reproduce", help="check out a version's run in DIR and `dvc pull` its outputs")
    rp.add_argument("name")
    rp.add_argument("version")
    rp.add_argument("dir", help="folder to restore into: new (cloned), or a clone without local changes")
    rp.add_argument(
        "--repo",
        default=None,
        help="git repository holding the run refs (default: this checkout; a URL for a team remote)",
    )
    parser.set_defaults(func=run)


def _context(args: argparse.Namespace):
    params_path = Path(args.params)
    params = load_params(params_path) if params_path.is_file() else {}
    uri = tracking.resolve_tracking_uri(params_path.resolve().parent, params, args.tracking_uri)
    tracking.check_reachable(uri)
    tracking.configure(uri)
    return registry, registry.client_for(uri), params, uri


def _fmt_scores(scores: dict[str, float], gated: list[str]) -> str:
    names = [n for n in gated if n in scores] or sorted(scores)[:3]
    return ", ".join(f"{n}={scores[n]:.3g}" for n in names) or "-"


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    try:
        return _run(args)
    except MlflowException as err:
        if access.is_refusal(err):
            raise access.explain(err, access.account(), f"models {args.action}") from None
        raise


def _run(args: argparse.Namespace) -> int:
    registry, client, params, uri = _context(args)
    if args.action == "list":
        gated = list(((params.get("gate") or {}).get("min") or {}).keys())
        rows = registry.list_versions(client, args.name)
        if not rows:
            print(f"no registered versions in {uri}")
            return 0
        print(f"store: {uri}")
        header = (
            f"{'model':<18} {'ver':>3}  {'aliases':<20} {'gate':<7} {'scores':<58} "
            f"{'commit':<10} {'data':<10} {'ckpt':<10}"
        )
        print(header)
        print("-" * len(header))
        for r in rows:
            verdict = r["verdict"] + ("*" if r["forced"] else "")
            print(
                f"{r['name']:<18} {r['version']:>3}  {','.join(sorted(r['aliases'])) or '-':<20} {verdict:<7} "
                f"{_fmt_scores(r['scores'], gated):<58} {r['commit'] or '-':<10} {r['data'] or '-':<10} "
                f"{r['checkpoint'] or '-':<10}"
            )
        if any(r["forced"] for r in rows):
            print("* promoted with --force; see the version's promotion.reason tag")
        return 0

    if args.action == "promote":
        gate = GateConfig.from_params(params, where=args.params)
        print(registry.promote(client, args.name, args.version, gate, force=args.force, reason=args.reason))
        return 0
    if args.action == "release":
        gate = GateConfig.from_params(params, where=args.params)
        print(release.promote_to_production(client, args.name, args.version, gate=gate))
        return 0
    if args.action == "setup":
        from flows.register_step import REGISTER_DEFAULTS

        experiment = args.experiment or section(params, "register", REGISTER_DEFAULTS)["experiment"]
        release.setup(uri, args.name, pipeline=args.pipeline, release=args.release, experiment=experiment)
        return 0
    if args.action == "reproduce":
        return _reproduce(args, registry, client)
    print(registry.rollback(client, args.name, reason=args.reason))
    return 0


def _reproduce(args: argparse.Namespace, registry, client) -> int:
    """The run's ref -> DIR, `dvc pull`, then `dvc status` must be clean (exit 1 when it is not)."""

    ref, commit = registry.lineage_ref(client, args.name, args.version)
    checkout = Path(args.params).resolve().parent
    here = git.git(checkout, "rev-parse", "--show-toplevel", check=False)
    # where the ref may be: --repo, else this repository, the one the version recorded (the git remote it was
    # pushed to, or the checkout it was saved in), this repository's origin (a plain clone has no refs/exps)
    candidates = (
        [args.repo]
        if args.repo
        else [
            here,
            registry.lineage_repo(client, args.name, args.version),
            git.remote_url(Path(here), "origin")
            if here and "origin" in git.git(Path(here), "remote", check=False).split()
            else None,
        ]
    )
    source = workspace.find_ref([c for c in dict.fromkeys(candidates) if c], ref)
    if source is None:
        tried = ", ".join(c for c in dict.fromkeys(candidates) if c) or "no repository"
        raise UsageError(
            f"{args.name} v{args.version}: its run ref {ref} is in none of: {tried}; pass --repo with "
            "the git repository it was pushed to (pipeline.push_ref) or the checkout it ran in"
        )
    # DVC remotes from the repository the run was saved in when it is a local checkout (its local remote is then
    # readable here), else from this checkout
    local_source = Path(source) if "://" not in source and (Path(source) / ".dvc").is_dir() else None
    config_from = local_source or (checkout if (checkout / ".dvc").is_dir() else None)
    dest = workspace.restore_run(source, ref, commit, Path(args.dir), print, dvc_config_from=config_from)
    dvc_ops.run_streaming([sys.executable, "-m", "dvc", "pull"], dest, print, "dvc pull")
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=dest, env=dvc_ops.tool_env(), capture_output=True, text=True
    )
    clean = status.returncode == 0 and "up to date" in status.stdout
    print(
        f"{args.name} v{args.version}: {dest} holds {ref} ({commit[:10]}); dvc status: "
        + ("clean, `dvc repro` has nothing to do" if clean else "NOT clean:\n" + status.stdout.strip())
    )
    return 0 if clean else 1
