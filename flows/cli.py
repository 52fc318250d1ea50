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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinflow", description=__doc__.splitlines()[0])
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
        message = " ".join(redact(str(err)).split("\n"))
        print(f"twinflow {args.command}: error: {message}", file=sys.stderr)
        return exit_code(err)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
