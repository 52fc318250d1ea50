"""Which failures the pipeline retries: transient faults (network, S3, a tracking server) versus
deterministic ones (bad data, a bad config, a bug, a failed gate), decided explicitly here.

A retry only helps when the world may have changed between attempts. A stage that failed on its input
will fail the same way again, so retrying it wastes time and buries the real error under repeats.
"""

from __future__ import annotations

import re

from twinflow_core.errors import TwinflowError

# Output patterns of faults that may go away by themselves. Checked against the tail of a failed
# command's output (stage, `dvc push`) or an exception's text. Deterministic markers win (below).
TRANSIENT_PATTERNS = [
    r"Connection ?refused",
    r"ConnectionError",
    r"ConnectTimeout",
    r"ReadTimeout",
    r"timed? ?out",
    r"Temporary failure in name resolution",
    r"Name or service not known",
    r"Max retries exceeded",
    r"EndpointConnectionError",
    r"Could not connect to the endpoint",
    r"SlowDown",
    r"RequestTimeout",
    r"ServiceUnavailable",
    r"\b50[234]\b",
    r"Too ?Many ?Requests",
    r"\b429\b",
    r"Connection reset",
    r"BrokenPipe",
    r"RemoteDisconnected",
    r"ClientConnectorError",
    r"ServerDisconnectedError",
    r"database is locked",
]
# Failures that no retry can fix, even if their text also mentions a connection (e.g. a DataError
# whose message quotes a URL). TwinflowError subclasses are user-fixable by definition.
DETERMINISTIC_PATTERNS = [
    r"\bDataError\b",
    r"\bConfigError\b",
    r"\bCheckpointError\b",
    r"\bBenchmarkOutputError\b",
    r"\bGateFailed\b",
    r"validation failed",
    r"ValidationError",
    r"NoSuchBucket",
    r"AccessDenied",
    r"InvalidAccessKeyId",
    r"SignatureDoesNotMatch",
    r"No such file or directory",
    r"ModuleNotFoundError",
    r"SyntaxError",
    r"is not a DVC stage|does not exist",
]
_TRANSIENT = re.compile("|".join(TRANSIENT_PATTERNS), re.IGNORECASE)
_DETERMINISTIC = re.compile("|".join(DETERMINISTIC_PATTERNS))


# appended to a transient failure's message while retries remain; replaced by the count once they are spent
RETRY_MARK = " [transient: will be retried]"


class StageFailed(TwinflowError):
    """A pipeline step failed for a reason a retry will not fix; the message carries its error.

    `exit_code` is the stage's own status when it is one of the input families (10..15 of twinflow_core.errors),
    so `twinflow run` exits 11 for bad data found by `prepare` as `prepare` itself does; else 16."""

    exit_code = 16
    kind = "stage"

    def __init__(self, message: str, stage_status: int | None = None):
        super().__init__(message)
        if stage_status is not None and 10 <= stage_status <= 15:
            self.exit_code = stage_status


class TransientFault(TwinflowError):
    """A pipeline step failed on something outside it (network, S3, tracking server): worth a retry."""

    exit_code = 17
    kind = "transient"


def is_transient_text(text: str) -> bool:
    if _DETERMINISTIC.search(text):
        return False
    return bool(_TRANSIENT.search(text))


def is_transient(exc: BaseException) -> bool:
    """True for faults worth retrying. TransientFault is, StageFailed and TwinflowError are not;
    anything else (an exception from a client library) is judged by its type and text."""
    if isinstance(exc, TransientFault):
        return True
    if isinstance(exc, TwinflowError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return is_transient_text(f"{type(exc).__name__}: {exc}")


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task only when its exception is transient."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the state's own exception is what we classify
        return is_transient(exc)
    return False


def gave_up(err: TransientFault, attempts: int, delays: list[float]) -> TransientFault:
    """The last attempt's fault, saying that retrying is over and how it was paced (one line)."""
    waits = ", ".join(f"{d:g}" for d in delays)
    return TransientFault(
        str(err).replace(RETRY_MARK, "")
        + f" (gave up after {attempts} attempts"
        + (f", waiting {waits} s between them)" if delays else ")")
    )


def backoff_delays(retries: int, first_delay_s: float) -> list[float]:
    """Exponential backoff: first, 2x first, 4x first..."""
    return [first_delay_s * (2**i) for i in range(max(0, retries))]
