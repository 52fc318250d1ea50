"""Third-party noise kept out of the stage logs, each at its source and by name (never a blanket filter).

- Lightning's rank-zero "💡 Tip: ... try installing [litlogger] / [litmodels]" lines (advertising for its cloud
  services, printed on every fit): a logging filter on `lightning.pytorch.utilities.rank_zero` that drops only
  records starting with that tip marker; its other info lines (devices, precision) stay.
- MLflow's sqlite tracking store configuring SQLAlchemy mappers with the deprecated `noload` strategy
  (SADeprecationWarning from mlflow.store.*): a deprecation inside MLflow that a user can do nothing about.
- MLflow's two pyfunc logging advice lines (UserWarning from mlflow.pyfunc: "Add type hints to the `predict`
  method", "An input example was not provided"): the registered model takes a list of captions and its
  signature is set explicitly (flows/tracking.py log_pipeline_run), so the advice does not apply.
  MLflow wraps its model logging in `simplefilter("once", UserWarning)` (`filter_user_warnings_once`), which
  outranks a global filter, so `mlflow_advice_muted()` is also put around the call that logs the model.
- MLflow's "Creating initial MLflow database tables..." / "Updating database tables" INFO lines (a new sqlite
  store) and its artifact-download progress bar (`MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`) when it copies the model.
- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..." lines (a latent
  pipeline's image processors; torchvision is not part of this stack: the PIL processors are what it uses), and,
  in a log rather than a terminal, the model-loading progress bars of transformers and diffusers (many lines per
  load; the stages print their own progress).
- DVC's closing advice after each `dvc repro` ("To track the changes with git", "To enable auto staging", "Use
  `dvc push`"): the flow records and pushes the run itself. Dropped where the flow relays DVC's output
  (flows/dvc_ops.py DvcAdviceFilter), not here: it is DVC's stdout, not a log record of this process.
- torch's FutureWarning that `LeafSpec` is deprecated, raised where Lightning's own pytree helper builds one
  (lightning.pytorch.utilities._pytree, at every fit): a deprecation between two libraries, nothing a user can change.

- `twinflow run`'s console (run_console): Prefect's own reports of an exception ("Encountered exception during
  execution" with its ~40-line traceback, "Engine execution interrupted ...") stay off stderr, where the command
  ends with the one line of the error's family instead; and from the moment a run is interrupted (a stop signal, or
  Prefect's "Crash detected!", which only a BaseException such as a signal causes) nothing more of the flow's
  logging reaches stderr, only the command's closing line. Every record, tracebacks included, still goes to the run's
  log file (credentials redacted), which that line names.
"""

# Lazy imports: diffusers, mlflow, sqlalchemy
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings

from twinflow_core.redaction import redact

TIP_MARKER = "\N{ELECTRIC LIGHT BULB} Tip:"
MLFLOW_ADVICE = (r".*Add type hints to the `predict` method", r".*An input example was not provided")


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with `prefix` or contains `part`; keeps every other one."""

    def __init__(self, prefix: str = "", part: str = ""):
        super().__init__()
        self.prefix, self.part = prefix, part

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.getMessage())
        return not ((self.prefix and text.startswith(self.prefix)) or (self.part and self.part in text))


def _drop_messages(logger_name: str, prefix: str = "", part: str = "") -> None:
    """Install the filter on the named logger once (the same logger object exists before its library imports)."""
    log = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessages) and (f.prefix, f.part) == (prefix, part) for f in log.filters):
        log.addFilter(_DropMessages(prefix, part))


def quiet_third_party() -> None:
    """Install the filters above (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        _drop_messages(name, prefix=TIP_MARKER)
    warnings.filterwarnings(
        "ignore",
        message=r".*isinstance\(treespec, LeafSpec\)\` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    for advice in MLFLOW_ADVICE:
        warnings.filterwarnings("ignore", message=advice, category=UserWarning, module=r"mlflow\.pyfunc")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    _drop_messages("transformers.utils.import_utils", part="requires torchvision (not installed)")
    if not sys.stderr.isatty():
        # transformers reads this at import; diffusers has no switch before import: quiet_loading_bars() after
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from sqlalchemy.exc import SADeprecationWarning
    except ImportError:  # no SQLAlchemy: no MLflow sqlite store, nothing to filter
        return
    warnings.filterwarnings("ignore", category=SADeprecationWarning, module=r"mlflow\.store\.")


@contextlib.contextmanager
def mlflow_advice_muted():
    """Around an MLflow call that resets the warning filters inside itself: its advice lines are dropped, every
    other warning is passed on as it was raised."""

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, UserWarning) and any(re.match(a, text, re.S) for a in MLFLOW_ADVICE):
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# what mlflow.register_model prints before it asks the server anything, so also just before a refusal
MLFLOW_REGISTRATION_CHATTER = ("Successfully registered model ", "Registered model ", "Created version ")


@contextlib.contextmanager
def mlflow_registration_chatter_muted():
    """Around mlflow.register_model: its progress lines dropped (the caller prints the outcome), anything else it
    prints passed on."""
    from mlflow.tracking._model_registry import fluent

    printed = fluent.eprint

    def eprint(*args, **kwargs):
        if not (args and str(args[0]).startswith(MLFLOW_REGISTRATION_CHATTER)):
            printed(*args, **kwargs)

    fluent.eprint = eprint
    try:
        yield
    finally:
        fluent.eprint = printed


def quiet_loading_bars() -> None:
    """diffusers' pipeline-loading progress bars off in a log (not on a terminal); call once diffusers is wanted."""
    if sys.stderr.isatty():
        return
    import diffusers.utils.logging

    diffusers.utils.logging.disable_progress_bar()


class _RunConsole(logging.Filter):
    """On Prefect's console handler during `twinflow run`: drops Prefect's exception reports (a record of a
    `prefect...` logger carrying a traceback) and, once `muted`, everything."""

    def __init__(self):
        super().__init__()
        self.muted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.muted:
            return False
        if record.name.startswith("prefect") and (record.exc_info or record.exc_text):
            return False
        try:
            text = str(record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot format is the handler's problem, not this filter's
            return True
        if text.startswith("Crash detected!"):  # the flow is being interrupted: the command says so in one line
            self.muted = True
            return False
        return True


_console = _RunConsole()


class _RedactedFileHandler(logging.FileHandler):
    """The run's log file: what the console would show, plus tracebacks, with credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def run_console(log_path) -> None:
    """For `twinflow run`, once Prefect is imported (it configures logging at import): the console filter above on
    Prefect's console handlers, and every record of the root logger's tree (Prefect's flow and task logs, with the
    output of each stage they relay) appended to `log_path` in Prefect's format, tracebacks included. Idempotent."""
    root = logging.getLogger()
    formatter = None
    for handler in root.handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            if _console not in handler.filters:
                handler.addFilter(_console)
            formatter = formatter or handler.formatter
    if not any(isinstance(h, _RedactedFileHandler) for h in root.handlers):
        file_handler = _RedactedFileHandler(log_path, encoding="utf-8")
        file_handler.setFormatter(
            formatter or logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
        )
        root.addHandler(file_handler)


def mute_console(*_) -> None:
    """No more of the flow's logging on stderr (it still goes to the run's log): the command is about to print its
    closing line, or is stopping on a signal."""
    _console.muted = True


def log_to_run_file(message: str) -> None:
    """A line of the command's own in the run's log file only (the console may be muted already)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _RedactedFileHandler):
            handler.handle(
                logging.makeLogRecord(
                    {"name": "twinflow.run", "levelno": logging.INFO, "levelname": "INFO", "msg": message}
                )
            )
