"""Release actions that move `champion` one at a time, each leaving an append-only audit record.

MLflow has no transactions: an alias or a tag is last-writer-wins. Two release actions at once (two promotions, a
promotion and a rollback, a pipeline's registration beside a manual promote) would each read the champion and its
`champion_history` tag, then write them back, so one action's history entry is lost and the trail no longer says
who replaced whom. The one write MLflow numbers atomically is *creating a model version*: a version number is the
highest one the model ever had plus one (deleted versions keep theirs), under the database's unique key, so two
creators never get the same number and a number is handed out only after every lower one is in the store. And
creating or deleting a version is a write MLflow's permissions guard (EDIT / MANAGE on the registered model),
unlike creating a registered model, which any account may do. So:

- the lock of model `<name>` is a second registered model, `<name>.release-lock`, reserved at set-up (`twinflow
  models setup`, flows/release.py) for the accounts that move `<name>@champion`: MANAGE for them, READ (the
  server's default) for everyone else, who can therefore neither take, hold nor break it;
- taking the lock = creating a version of it (a "ticket", tags: holder, token, since); the lowest live ticket
  holds the lock, the others wait in the order they came; giving it back = deleting one's ticket;
- a ticket older than `stale_after_s` (a crashed holder) is deleted by the next waiter: exactly that ticket, so a
  breaker can never remove a lock somebody took in the meantime; its age is measured on the server's clock (the
  waiter's own ticket is the reference), so a skewed client clock cannot break a live lock;
- under the lock an action reads the champion, writes the alias and the history, then re-reads the alias
  (compare-and-set: a write that did not stick, e.g. by a client that bypassed the lock, is an error, not a silent
  success);
- every action appends one audit record, a registered-model tag `audit.<seq>` (JSON: action, version, previous
  champion, who, when, why, the gate verdict, forced). Its sequence number is the last one plus one, read under the
  lock, so records never overwrite each other and record n's `previous` is record n-1's `champion`.

Without set-up (the embedded sqlite store, a server without authentication) the first action creates the lock model.
MLflow's exceptions are imported where a server is asked: MLflow takes seconds to import.
"""

# Lazy imports: mlflow
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import getpass
import json
import os
import random
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime

from flows.access import is_refusal
from twinflow_core.errors import USAGE_EXIT, TrackingError

LOCK_SUFFIX = ".release-lock"
AUDIT_PREFIX = "audit."
CHAMPION = "champion"
# a ticket holds no model: MLflow wants a source for every version, and this one names nothing to download
TICKET_SOURCE = "s3://release-lock/ticket"


class ReleaseBusy(TrackingError):
    """Another release action held the model's lock for longer than this one would wait (exit 2, like a busy
    checkout: nothing was changed)."""

    exit_code = USAGE_EXIT
    kind = "busy"


def lock_name(name: str) -> str:
    return name + LOCK_SUFFIX


def is_lock(name: str) -> bool:
    return name.endswith(LOCK_SUFFIX)


def actor() -> str:
    """Who acts: the MLflow account when there is one (team servers), and the local user."""
    account = os.environ.get("MLFLOW_TRACKING_USERNAME")
    user = getpass.getuser()
    return f"{account} ({user})" if account and account != user else user


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _code(err: Exception) -> str:
    return str(getattr(err, "error_code", "")) + " " + str(err)


def _busy_store(err: Exception) -> bool:
    """sqlite's writer lock, or the SQL store giving up on a version number that many creators wanted at once:
    a moment's contention, tried again."""
    text = _code(err)
    return "database is locked" in text or "Model Version creation error" in text


def ensure_lock_model(client, name: str) -> str:
    """`<name>.release-lock`, created when missing (a store without set-up); returns its name."""
    from mlflow.exceptions import MlflowException

    lock = lock_name(name)
    try:
        client.get_registered_model(lock)
        return lock
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" not in _code(err):
            raise
    try:
        client.create_registered_model(
            lock,
            description=f"release lock of {name}: one version per waiting or "
            f"holding release action (flows/release_lock.py)",
        )
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in _code(err):
            raise
    return lock


def _take_ticket(client, lock: str, token: str):
    from mlflow.exceptions import MlflowException

    for attempt in range(20):
        try:
            return client.create_model_version(
                lock, TICKET_SOURCE, tags={"holder": actor(), "token": token, "since": now()}, await_creation_for=0
            )
        except MlflowException as err:
            if is_refusal(err):
                account = os.environ.get("MLFLOW_TRACKING_USERNAME")
                who = f"account {account!r}" if account else "this client"
                raise TrackingError(
                    f"{who} lacks the permission to take the release lock {lock} (only the accounts that move "
                    f"{lock[: -len(LOCK_SUFFIX)]}@{CHAMPION} may; `twinflow models setup` grants them, "
                    "infra/README.md)"
                ) from None
            if not _busy_store(err) or attempt == 19:
                raise
        time.sleep(0.05 * (1 + random.random()) * (attempt + 1))


def _tickets(client, lock: str) -> list:
    return sorted(client.search_model_versions(f"name='{lock}'"), key=lambda v: int(v.version))


def _delete_ticket(client, lock: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version(lock, str(version))
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in _code(err):
            return  # gone already (another waiter broke the same stale ticket)
        raise


@contextmanager
def release_lock(client, name: str, *, wait_s: float = 120.0, stale_after_s: float = 600.0, poll_s: float = 0.05):
    """Hold `<name>.release-lock` for the body. Waits (with jitter) while earlier tickets are live."""
    lock = ensure_lock_model(client, name)
    token = uuid.uuid4().hex
    mine = _take_ticket(client, lock, token)
    taken_at = time.monotonic()
    deadline = taken_at + wait_s
    try:
        while True:
            ahead = [t for t in _tickets(client, lock) if int(t.version) < int(mine.version)]
            if not ahead:
                break
            first = ahead[0]
            # the server's "now": my ticket's creation time plus the time since I took it
            server_now_ms = mine.creation_timestamp + (time.monotonic() - taken_at) * 1000
            if server_now_ms - first.creation_timestamp > stale_after_s * 1000:
                _break_stale(client, lock, first)
                continue
            if time.monotonic() > deadline:
                tags = first.tags or {}
                raise ReleaseBusy(
                    f"{name}: another release action holds {lock} (by {tags.get('holder', '?')} "
                    f"since {tags.get('since', '?')}, ticket v{first.version}); try again, or if none "
                    f"runs, wait until it is {stale_after_s:.0f} s old: it is then broken"
                )
            time.sleep(poll_s * (1 + random.random()))
            poll_s = min(poll_s * 1.5, 1.0)
        yield
    except BaseException:
        try:  # the action's own error is the one to report
            _delete_ticket(client, lock, mine.version)
        except Exception:  # noqa: BLE001 - left behind, the ticket goes stale and is broken
            pass
        raise
    _delete_ticket(client, lock, mine.version)


def _break_stale(client, lock: str, ticket) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _delete_ticket(client, lock, ticket.version)
    except MlflowException as err:
        if is_refusal(err):
            raise TrackingError(
                f"{lock}: ticket v{ticket.version} of {(ticket.tags or {}).get('holder', '?')} is "
                "stale, and this account may not break it (it needs MANAGE on the lock: "
                "`twinflow models setup`)"
            ) from None
        raise


def audit_trail(client, name: str) -> list[dict]:
    """The model's audit records, oldest first."""
    tags = client.get_registered_model(name).tags or {}
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(AUDIT_PREFIX))]


def append_audit(client, name: str, record: dict) -> dict:
    """One more record, numbered after the last (call it under the lock)."""
    seq = len(audit_trail(client, name)) + 1
    record = {"seq": seq, "by": actor(), "at": now(), **record}
    client.set_registered_model_tag(name, f"{AUDIT_PREFIX}{seq:06d}", json.dumps(record, sort_keys=True))
    return record


def set_alias_checked(client, name: str, version: str) -> None:
    """Move `champion` to `version` and read it back: a write that did not stick is an error."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    now_at = str(client.get_model_version_by_alias(name, CHAMPION).version)
    if now_at != str(version):
        raise TrackingError(
            f"{name}@{CHAMPION}: set to v{version} but reads v{now_at}: a client outside the "
            f"release lock changed it; see the model's audit.* tags"
        )
