"""`twinflow run [KEY=VALUE ...]`: the whole pipeline on the embedded default, then what a person wants to
know: 1-NFE scores beside the reference, the gate verdict, the model version and its alias, where the
sample grid is, and how to open the MLflow and Prefect UIs.

Overrides change params.yaml keys (`twinflow run train.steps=200`); an unknown key fails at once.
Without overrides the run works in this checkout (one at a time: a second is refused, naming the first);
with overrides (or --isolate) it works in a git worktree of its own and leaves this checkout's files as
they were. Either way the run is saved as a DVC experiment ref (`dvc exp list`), which its registered
version names (`twinflow models reproduce NAME VERSION DIR` checks it out again).
Exit status: 0 done and gate passed, 3 done but the gate failed (version left as challenger),
2 a user-fixable error (bad override, bad data, a failing stage), 1 anything else.
A failure inside the flow ends with that one line, which names the run's log (.dvc/tmp/twinflow-logs/): the whole
Prefect log is there, tracebacks included, and stays off stderr. Ctrl-C, or SIGTERM to the command or its process
group, stops the stage, its `dvc repro` and the temporary Prefect server, keeps what finished stages made (train's
resume states too: the same command resumes), and exits 130 (SIGINT) or 143 (SIGTERM) with one line.
"""

# Lazy imports: numpy, omegaconf, prefect, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from flows import lifetime, quiet, servers, tracking
from flows.cli import error_line
from flows.faults import TransientFault
from flows.workspace import ensure_free, wants_isolation
from twinflow_core.errors import TwinflowError
from twinflow_core.redaction import redact

GATE_FAILED_EXIT = 3


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the whole pipeline (prepare ... register) and summarise it",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="params.yaml overrides")
    parser.add_argument("--workdir", default=None, help="project folder (default: this checkout)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: sqlite mlflow.db here); no "
        "password in it: the run records it (give MLFLOW_TRACKING_URI or MLFLOW_TRACKING_PASSWORD)",
    )
    parser.add_argument("--no-push", action="store_true", help="skip `dvc push` to the remote")
    parser.add_argument("--no-register", action="store_true", help="stop after evaluate (no MLflow)")
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="work in a workspace of its own even without overrides (default: only with them)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.config_check import check_overrides  # cheap: prefect is not imported yet

    start = time.monotonic()
    # a bad override (or a credential in one, or in --tracking-uri) fails here, nothing ran
    root, parsed, base = check_overrides(args.overrides, args.workdir, args.tracking_uri)

    if not wants_isolation(root, parsed, True if args.isolate else None):
        ensure_free(root)  # a busy checkout is refused in one line, before Prefect starts
    _check_servers(root, base.with_overrides(parsed), args.tracking_uri, not args.no_register)

    lifetime.raise_on_stop_signals(on_first=quiet.mute_console)
    log_path = run_log_path(root)
    try:
        return _run_flow(args, root, log_path, start)
    except BaseException as exc:  # noqa: BLE001 - a stop signal ends here; anything else goes on up
        sig = lifetime.stop_signal(exc)
        if sig is None:
            raise
        return _closing_line(
            f"twinflow run: stopped by {signal.Signals(sig).name}: the run and every process it "
            "started have ended; what finished stages made is kept (train's resume states too), "
            f"and the same command resumes (log: {log_path})",
            128 + sig,
        )


def _run_flow(args: argparse.Namespace, root: Path, log_path: Path, start: float) -> int:
    """The flow, then its summary (stdout) or its one closing line (stderr); the exit status."""

    temporary = _prefect_api(log_path)
    from flows.pipeline import pipeline

    quiet.run_console(log_path)
    state = pipeline(
        overrides=list(args.overrides),
        workdir=str(root),
        push=not args.no_push,
        register_model=not args.no_register,
        tracking_uri=args.tracking_uri,
        isolate=True if args.isolate else None,
        return_state=True,
    )
    quiet.mute_console()
    wall = time.monotonic() - start
    if not state.is_completed():
        err = state.result(raise_on_failure=False)

        if isinstance(err, TwinflowError):
            line, code = error_line("run", err)  # one line, the family's status, no credential
            return _closing_line(f"{line} (log: {log_path})", code)
        return _closing_line(f"twinflow run: failed: {redact(str(state.message))} (traceback in {log_path})", 1)
    summary = state.result()
    summary["wall_seconds"] = round(wall, 1)
    summary["prefect_temporary"] = temporary
    summary["log"] = str(log_path)
    print(render_summary(summary))
    reg = summary.get("registration")
    return GATE_FAILED_EXIT if reg and reg["verdict"] != "passed" else 0


def run_log_path(root: Path) -> Path:
    """The run's log file: in the project's .dvc/tmp (git-ignored by DVC, beside the isolated workspaces), named by
    the time it started."""

    base = root / ".dvc" / "tmp" if (root / ".dvc").is_dir() else Path(tempfile.gettempdir())
    folder = base / "twinflow-logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _prefect_api(log_path: Path) -> bool:
    """Point Prefect, before it is imported, at a temporary API server this command owns when none is configured
    (flows/servers.py start_temporary_prefect_server: out of this process group, gone with this process) and stop
    that server at exit, after Prefect has sent its last logs and events (its workers drain before `atexit`
    callbacks run). True when the server is such a temporary one."""

    if servers.prefect_api_configured():
        return False
    # the server can take > 20 s to start on a busy 2-core box
    timeout = float(os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    api, server = servers.start_temporary_prefect_server(timeout, log_path)
    atexit.register(_stop_server, server)
    os.environ["PREFECT_API_URL"] = api
    os.environ.setdefault("PREFECT_UI_URL", "")  # no "View at" link: this server serves no UI and ends with the run
    return True


def _stop_server(server) -> None:
    lifetime.ignore_stop_signals()  # a late Ctrl-C must not leave the server half stopped
    servers.stop_temporary(server)


def _closing_line(line: str, code: int) -> int:
    """The command's last line on stderr (and in the run's log), and its exit status."""

    quiet.mute_console()
    quiet.log_to_run_file(line)
    print(line, file=sys.stderr, flush=True)
    return code


def _check_servers(root, params, tracking_uri: str | None, registers: bool) -> None:
    """The servers' logins, before anything runs: a wrong MLflow password or Prefect auth string is one line now
    (exit 14), not a failed stage later. `params`: the run's (flows.params.Params, its overrides set)."""

    if registers:
        try:
            tracking.check_reachable(tracking.resolve_tracking_uri(root, params.tree, tracking_uri))
        except TransientFault:
            pass  # down for now: the stages run, and registration retries it at the end (docs/reliability.md)
    servers.check_prefect_login()


HEADLINE = (
    "geneval-shapes/overall",
    "dpg-shapes/score",
    "geneval/overall",
    "dpg/score",
    "features-shapes/fd",
    "features-shapes/diversity",
)


def _score_table(scores: dict[str, float], gated: list[str]) -> list[str]:
    """One line per headline metric: TwinFlow at 1 (2, 4) NFE, the base at 1 NFE (the mean collapse),
    and on the reference prompts TwinFlow at 1 NFE beside the base at many Euler steps (the paper's
    comparison). Names follow the evaluate stage: `M@1nfe`, `base/M@1nfe`, `base/<bench>-refset/...@euler50`."""
    gated_bases = [g.rsplit("@", 1)[0] for g in gated]
    metrics = list(dict.fromkeys(gated_bases + [m for m in HEADLINE if f"{m}@1nfe" in scores]))
    lines = []
    for m in metrics:
        parts = []
        for k in ("1nfe", "2nfe", "4nfe"):
            if f"{m}@{k}" in scores:
                parts.append(f"{k[0]} NFE {_pm(scores, m, k)}")
        if f"base/{m}@1nfe" in scores:
            parts.append(f"base at 1 NFE {_pm(scores, 'base/' + m, '1nfe')}")
        many = sorted(k.rsplit("@", 1)[1] for k in scores if k.startswith(f"base/{m}@") and not k.endswith("nfe"))
        parts += [f"base {s} {_pm(scores, 'base/' + m, s)}" for s in many]
        bench, _, rest = m.partition("/")
        refset = f"{bench}-refset/{rest}"
        refs = {
            k.rsplit("@", 1)[1]: v
            for k, v in scores.items()
            if k.startswith(f"base/{refset}@") and not k.endswith("nfe")
        }
        if refs and f"{refset}@1nfe" in scores:
            ref_text = ", ".join(f"base {s} {v:.3g}" for s, v in sorted(refs.items()))
            parts.append(f"reference prompts: 1 NFE {scores[f'{refset}@1nfe']:.3g} vs {ref_text}")
        if parts:
            lines.append(f"  {m:<26} " + " | ".join(parts) + ("   (gated)" if m in gated_bases else ""))
    return lines or [f"  {k:<40} {v:.4g}" for k, v in sorted(scores.items())[:12]]


def _pm(scores: dict[str, float], m: str, setting: str) -> str:
    """'0.412 +- 0.021' when the evaluation wrote the score's standard error, else '0.412'."""
    se = scores.get(f"{m}_se@{setting}")
    return f"{scores[f'{m}@{setting}']:.3g}" + (f" +- {se:.2g}" if se is not None else "")


def _ratio_lines(scores: dict[str, float]) -> list[str]:
    """The paper's claim as numbers: ratio/<M>@<setting> (the model / the base's many-step reference,
    paired over the same prompts) with its standard error."""
    lines = []
    for key in sorted(k for k in scores if k.startswith("ratio/") and "_se@" not in k):
        name, _, setting = key.rpartition("@")
        se = scores.get(f"{name}_se@{setting}")
        who = "base" if name.startswith("ratio/base/") else "twinflow"
        metric = name.removeprefix("ratio/").removeprefix("base/")
        lines.append(
            f"  {who} {metric} @{setting} / reference: {scores[key]:.3f}" + (f" +- {se:.3f}" if se is not None else "")
        )
    return lines


def render_summary(summary: dict) -> str:
    reg = summary.get("registration") or {}
    stages = ", ".join(
        f"{s['stage']} {'ran ' + format(s['seconds'], '.0f') + ' s' if s['ran'] else 'cached'}"
        for s in summary["stages"]
    )
    gated = [r.split(" ")[0] for r in reg.get("reasons", [])]
    lines = [
        "",
        f"TwinFlow pipeline done in {summary.get('wall_seconds', summary['seconds']):.0f} s "
        f"(flow run '{summary['flow_run_name']}')",
        f"stages: {stages}",
        "scores at 1 NFE beside the reference (metrics/eval.json):",
        *_score_table(summary.get("scores", {}), gated),
    ]
    ratios = _ratio_lines(summary.get("scores", {}))
    if ratios:
        lines += ["ratios to the base's many-step reference, same prompts (1.0 = as good as the reference):", *ratios]
    if reg:
        verdict = "PASSED" if reg["verdict"] == "passed" else "FAILED"
        lines += [
            f"gate: {verdict}: " + "; ".join(reg["reasons"]),
            f"model: {reg['model_name']} v{reg['version']}"
            f"{'' if reg['created'] else ' (already registered; no new version)'}, "
            f"aliases: {', '.join(sorted(reg['aliases'])) or 'none'}; champion is "
            f"{'v' + reg['champion'] if reg['champion'] else 'none'}",
            f"  {reg['decision']}" if reg.get("decision") else "",
            f'  load it: mlflow.pyfunc.load_model("models:/{reg["model_name"]}@champion").predict(["a red circle"])',
        ]
    ref = summary.get("git_ref") or {}
    if ref:
        where = (
            f"worked in its own workspace (removed; {summary['checkout']} untouched)"
            if summary.get("isolated")
            else "worked in this checkout"
        )
        lines.append(
            f"run: {where}; saved as {ref['ref']} ({ref['commit'][:10]}); "
            f"`dvc exp apply {ref['commit'][:10]}` brings it here"
        )
    for path in summary.get("samples", []):
        # an isolated run's grids live in its ref: "<commit>:<path>"
        lines.append(f"samples: {path}" + (f"   (git show {path} > {path.split('/')[-1]})" if ":" in path else ""))
    if summary.get("log"):
        lines.append(f"log: {summary['log']}")

    uri = redact(reg.get("tracking_uri", ""))  # never print a credential
    if uri:
        if uri.startswith(("http://", "https://")):
            lines.append(f"MLflow UI: {uri}/#/models/{reg['model_name']}")
        else:
            lines.append(
                f"MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
                f"   then open http://127.0.0.1:5000/#/models/{reg['model_name']}"
            )
    api = "" if summary.get("prefect_temporary") else os.environ.get("PREFECT_API_URL", "")
    if api:
        lines.append(f"Prefect UI: {api.removesuffix('/api')}/runs/flow-run/{summary['flow_run_id']}")
    else:
        lines.append(
            "Prefect UI: source tools/env.sh && prefect server start --host 127.0.0.1"
            f"   then open http://127.0.0.1:4200/runs/flow-run/{summary['flow_run_id']}"
        )
    return "\n".join(line for line in lines if line != "")
