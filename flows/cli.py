"""The `twinflow` console command.

Each sub-command lives in its own module under `flows.commands` and exposes
`register(subparsers)`, which adds its parser and sets `func` (called with the parsed args).
Modules are imported only to build the parser, so each must keep heavy imports
(torch, lightning, mlflow, prefect, great_expectations) inside its handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from flows.quiet import quiet_third_party
from twinflow_core.errors import USAGE_EXIT, TwinflowError, exit_code
from twinflow_core.redaction import redact

# name -> module; the order is the order of `twinflow --help`.
COMMAND_MODULES = {
    "generate": "flows.commands.generate",
    "run": "flows.commands.run",
    "toy": "flows.commands.toy",
    "eval": "flows.commands.eval",
    "models": "flows.commands.models",
}


DESCRIPTION = """\
TwinFlow one-step image generation, as a reproducible pipeline. `twinflow run` prepares and validates a
captioned image set, trains a flow-matching base, fine-tunes it with TwinFlow (arXiv 2512.05150) so that one
network evaluation draws an image, scores 1, 2 and 4 NFE against the base at 50 guided steps on GenEval- and
DPG-style benchmarks, and registers the model in MLflow as champion only if it passes the gate (params.yaml
`gate:`); Prefect runs the stages, DVC caches them. `twinflow generate` draws pictures from any trained or
registered model."""

EPILOG = """\
examples:
  twinflow run                                   the whole pipeline on the embedded shapes world
  twinflow generate "a red circle left of a blue square" --model models:/twinflow-shapes@champion --nfe 1 --out out.png
  twinflow models list                           registered versions, their aliases and gate verdicts
  twinflow COMMAND --help                        the options of one command"""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look), exit 2, like every other error."""

    def error(self, message: str):
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="twinflow", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # a command not built yet is simply absent from --help
        module.register(subparsers)
    return parser


def error_line(command: str, err: TwinflowError) -> tuple[str, int]:
    """The one line printed for a user-fixable error (credentials redacted) and its exit family."""
    message = " ".join(redact(str(err)).split("\n"))
    return f"twinflow {command}: error: {message}", exit_code(err)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    quiet_third_party()  # before any command imports Lightning or MLflow
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_EXIT
    try:
        result = args.func(args)
    except TwinflowError as err:
        # one line, the family's exit status (twinflow_core/errors.py), never a credential
        line, code = error_line(args.command, err)
        print(line, file=sys.stderr)
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
