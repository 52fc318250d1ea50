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

from twinflow_core.errors import USAGE_EXIT, TwinflowError, exit_code
from twinflow_core.redaction import redact

# name -> module; the order is the order of `twinflow --help`.
COMMAND_MODULES = {
    "run": "flows.commands.run",
    "toy": "flows.commands.toy",
    "eval": "flows.commands.eval",
    "models": "flows.commands.models",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look), exit 2, like every other error."""

    def error(self, message: str):
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="twinflow", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMAND_MODULES.items():
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
