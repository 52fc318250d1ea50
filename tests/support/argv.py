"""What every local account sees with `ps`: the command lines of all processes (/proc/*/cmdline)."""

from __future__ import annotations

from pathlib import Path


def secrets_in_argv(
    secrets: list[str], sessions: set[int] | None = None, marks: tuple[str, ...] = ()
) -> list[tuple[int, str]]:
    """(pid, command line) of each process whose arguments contain one of `secrets`; with `sessions`, only the
    processes of those sessions (servers started with start_new_session: a server and its workers) and those whose
    command line holds one of `marks` (e.g. a PostgreSQL data folder; pg_ctl detaches the server)."""
    import os

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if sessions is not None:
            try:
                mine = os.getsid(int(entry.name)) in sessions
            except OSError:
                continue
            if not (mine or any(mark in line for mark in marks)):
                continue
        if any(secret in line for secret in secrets):
            found.append((int(entry.name), line[:300]))
    return found
