"""Errors a user can fix. Each carries a one-line message naming what is wrong and where, and an exit status
whose family says what kind of input was wrong (the README's "Exit codes" section lists them):

    0 done | 1 a bug or an unexpected failure (traceback)
    2 bad command-line arguments (argparse's own), or a busy checkout
    3 done, but the promotion gate kept the new version as challenger (flows/commands/run.py)
    10 configuration or override | 11 input data | 12 object storage (S3, a DVC remote)
    13 checkpoint | 14 tracking server / model registry | 15 benchmark outputs
    16 a pipeline stage failed (with the stage's own status when it is one of the above)
    17 a transient fault outlived its retries (network, S3, tracking server down)
    18 the Python running a stage lacks the project's environment (flows/stages/__init__.py)
    128 + N: `twinflow run` stopped by signal N (130 Ctrl-C, 143 SIGTERM), having stopped everything it started

A subclass is chosen by the input at fault, not by the module that noticed it: a checkpoint that will not load is a
CheckpointError wherever it is read. Subclasses of DataError stay DataErrors, so `except DataError` still catches them.
"""

USAGE_EXIT = 2
GATE_FAILED_EXIT = 3


class TwinflowError(Exception):
    """Base of user-fixable errors: the CLI prints the message on one line, no traceback, exit `exit_code`."""

    exit_code = 10
    kind = "input"


class ConfigError(TwinflowError, ValueError):
    """A configuration value, key or combination is invalid (params.yaml, conf/, an override)."""

    exit_code = 10
    kind = "config"


class DataError(TwinflowError, ValueError):
    """Input data (an image, a caption, a metadata row, a shard) is missing or malformed."""

    exit_code = 11
    kind = "data"


class StorageError(DataError):
    """Object storage refused or could not be reached: a missing bucket, wrong credentials, a dead endpoint."""

    exit_code = 12
    kind = "storage"


class CheckpointError(DataError):
    """A checkpoint or training state is missing, truncated, not safetensors, or made for another architecture."""

    exit_code = 13
    kind = "checkpoint"


class TrackingError(TwinflowError):
    """The tracking server / model registry: an unknown model, version or alias, a refused call, a dead server."""

    exit_code = 14
    kind = "tracking"


class BenchmarkOutputError(DataError):
    """An official benchmark's output file (GenEval results.jsonl, DPG-Bench CSV/answers) cannot be scored."""

    exit_code = 15
    kind = "benchmark"


class UsageError(TwinflowError):
    """A command-line argument whose value is checked after parsing (argparse's own errors exit the same way)."""

    exit_code = USAGE_EXIT
    kind = "usage"


class GateRefused(TwinflowError):
    """A release action the promotion gate refuses (promote a version whose scores fail it): the gate's status."""

    exit_code = GATE_FAILED_EXIT
    kind = "gate"


EXIT_CODES = {
    0: "done",
    1: "unexpected failure (a bug: traceback)",
    USAGE_EXIT: "bad command-line arguments, or the checkout is busy with another run",
    GATE_FAILED_EXIT: "the promotion gate failed: the new version stays challenger (or a promote is refused)",
    ConfigError.exit_code: "configuration or override",
    DataError.exit_code: "input data",
    StorageError.exit_code: "object storage (S3, DVC remote)",
    CheckpointError.exit_code: "checkpoint",
    TrackingError.exit_code: "tracking server / model registry",
    BenchmarkOutputError.exit_code: "benchmark outputs",
    16: "a pipeline stage failed",
    17: "a transient fault outlived its retries",
    18: "the project's environment is missing (run `source tools/env.sh`)",
    129: "`twinflow run` stopped by SIGHUP (its terminal closed): as for 143",
    130: "`twinflow run` stopped by Ctrl-C (SIGINT): every process it started ended, finished stages kept; "
    "rerun resumes",
    143: "`twinflow run` stopped by SIGTERM (to it or its process group): as for 130",
}


def exit_code(err: BaseException) -> int:
    """The exit status for `err`: its family for a TwinflowError, 1 for anything else."""
    return int(getattr(err, "exit_code", 1)) if isinstance(err, TwinflowError) else 1
