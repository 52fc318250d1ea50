"""The command line every stage shares: `--params FILE`, a repeatable `--set KEY=VALUE` (read by
flows.params.load_with_sets, the parser `twinflow run` uses), `--root DIR` where the stage writes under a root, and
its ending: a user-fixable problem (a TwinflowError) is one line `<stage>: error: <what>` on stderr with its
family's exit code (README, "Errors and exit codes"), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from twinflow_core.errors import TwinflowError, exit_code


def stage_parser(stage: str, doc: str, example: str, root: bool = False) -> argparse.ArgumentParser:
    """`python -m flows.stages.<stage>`'s parser, described by the first line of the module's docstring `doc`.
    `example` is an override of the stage's own section shown in `--set`'s help; `root` adds `--root`."""
    parser = argparse.ArgumentParser(prog=f"python -m flows.stages.{stage}", description=doc.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a params key, e.g. {example} (repeatable; validated)",
    )
    if root:
        parser.add_argument("--root", default=".", help="repository root: inputs and outputs are under it")
    return parser


def stage_main(stage: str, body: Callable[[], int | None]) -> int:
    """Runs a stage's `body` and returns its exit code (None is 0); a TwinflowError it raises becomes one line on
    stderr and its family's exit code."""
    try:
        code = body()
    except TwinflowError as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return exit_code(err)
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise TypeError(f"{stage}: the stage's body returned {code!r}, not an exit code")  # a programming error
    return code or 0
