"""Release actions that move `champion` one at a time, each leaving an append-only audit record.

MLflow has no transactions: an alias or a tag is last-writer-wins. Two release actions at once (two promotions, a
promotion and a rollback, a pipeline's registration beside a manual promote) would each read the champion and its
`champion_history` tag, then write them back, so one action's history entry is lost and the trail no longer says
who replaced whom. The one write MLflow does make atomic is *creating a registered model*: its name is unique in
the store (a primary key in the SQL stores, a folder in the file store; the server answers RESOURCE_ALREADY_EXISTS
to every caller but the first). So:

- the lock is a registered model `<name>.release-lock`, created to take it (only one creator wins) and deleted to
  give it back; its tags say who holds it and since when, and a lock older than `stale_after_s` (a crashed holder)
  is broken so that the model is never stuck;
- under the lock an action reads the champion, writes the alias and the history, then re-reads the alias
  (compare-and-set: a write that did not stick, e.g. by a client that bypassed the lock, is an error, not a silent
  success);
- every action appends one audit record, a registered-model tag `audit.<seq>` (JSON: action, version, previous
  champion, who, when, why, the gate verdict, forced). Its sequence number is the last one plus one, read under the
  lock, so records never overwrite each other and record n's `previous` is record n-1's `champion`.

Breaking a stale lock is the one unguarded step (two breakers at the same instant); it only happens after a holder
died, `stale_after_s` (10 minutes) after it took the lock, while an action takes seconds.
"""
from __future__ import annotations

import getpass
import json
import os
import random
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

from twinflow_core.errors import USAGE_EXIT, TrackingError

LOCK_SUFFIX = ".release-lock"
AUDIT_PREFIX = "audit."
CHAMPION = "champion"


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
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _code(err: Exception) -> str:
    return str(getattr(err, "error_code", "")) + " " + str(err)


@contextmanager
def release_lock(client, name: str, *, wait_s: float = 120.0, stale_after_s: float = 600.0, poll_s: float = 0.05):
    """Hold `<name>.release-lock` for the body. Waits (with jitter) while another action holds it."""
    from mlflow.exceptions import MlflowException

    lock, token = lock_name(name), uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={"holder": actor(), "token": token, "since": now()},
                                           description=f"held while a release action changes {name}@{CHAMPION}")
            break
        except MlflowException as err:
            if not _lock_taken_or_racing(_code(err)):
                raise
        _break_if_stale(client, lock, stale_after_s)
        if time.monotonic() > deadline:
            holder = _tags(client, lock)
            raise ReleaseBusy(f"{name}: another release action holds {lock} (by {holder.get('holder', '?')} since "
                              f"{holder.get('since', '?')}); try again, or if none runs, delete registered model {lock}")
        time.sleep(poll_s * (1 + random.random()))
        poll_s = min(poll_s * 1.5, 1.0)
    try:
        yield
    finally:
        if _tags(client, lock).get("token") == token:
            client.delete_registered_model(lock)


def _lock_taken_or_racing(text: str) -> bool:
    """Whether a failed create of the lock means "someone else has it, or just had it: try again".

    - RESOURCE_ALREADY_EXISTS: it is held.
    - RESOURCE_DOES_NOT_EXIST: it was held and has just been given back. The SQL store answers a duplicate insert
      by reading the existing model to word its error (mlflow's SqlAlchemyStore.create_registered_model, the
      IntegrityError branch); when the holder deletes the lock between our insert and that read, the read fails
      and the create reports the lock as missing. Creating a model raises this for no other reason.
    - "database is locked": sqlite's writer lock, busy for a moment under many clients."""
    return any(mark in text for mark in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "database is locked"))


def _tags(client, lock: str) -> dict:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(lock).tags or {})
    except MlflowException:
        return {}


def _break_if_stale(client, lock: str, stale_after_s: float) -> None:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(lock)
    except MlflowException:
        return
    if time.time() - model.creation_timestamp / 1000 > stale_after_s:
        try:
            client.delete_registered_model(lock)
        except MlflowException:
            pass


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
        raise TrackingError(f"{name}@{CHAMPION}: set to v{version} but reads v{now_at}: a client outside the "
                            f"release lock changed it; see the model's audit.* tags")
