"""Release actions and logins on the team MLflow server (infra/mlflow/entrypoint.sh, basic-auth) on loopback, through
the real CLI (`twinflow models ...` as a subprocess) as each account: the admin reserves the names
(`twinflow models setup`), the pipeline's account registers, the release manager promotes and rolls back with the
commands infra/README.md documents, a reader and the pipeline are refused, a wrong password or no login is one line
with exit 14, and nobody but the accounts set up can take, hold or break a release lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import auth_mlflow, tls_proxy
from support.auth_mlflow import account_env, admin_env, as_account

from flows.servers import free_port, stop

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TWINFLOW = str(Path(sys.executable).parent / "twinflow")
CRED_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_URI")


TLS_PORT = free_port()  # the TLS proxy's, which the server must accept as a Host


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url, proc = auth_mlflow.start(tmp_path_factory.mktemp("auth-mlflow"), extra_hosts=f"localhost:{TLS_PORT}")
    yield url
    stop(proc)


def _env(creds: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CRED_KEYS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **creds}


def _start(url: str, creds: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [TWINFLOW, "models", "--tracking-uri", url, *args],
        cwd=cwd,
        env=_env(creds),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _cli(url, creds, cwd, *args) -> tuple[int, str, str]:
    return _finish(_start(url, creds, cwd, *args))


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Creating a new version" not in err
    return lines[0]


def _register(url: str, root: Path) -> dict:
    from flows.register_step import register_outputs

    with account_env(as_account("pipeline")):
        return register_outputs(root, tracking_uri=url)


def test_release_commands_through_the_cli_as_each_account(server, tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from support.pipeline import make_outputs, scores

    from flows import release_lock

    url = server
    proj = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=2)
    # a reader takes a lock name before set-up (any account may create a registered model)
    with account_env(as_account("reader")):
        MlflowClient(url, url).create_registered_model("tiny-gen.release-lock")

    # 1. the admin reserves every name: the reader's squat is taken back
    code, out, err = _cli(url, admin_env(), proj, "setup", "tiny-gen", "--pipeline", "pipeline", "--release", "release")
    assert code == 0, err[-3000:]
    assert "tiny-gen.release-lock: taken back from reader" in out
    assert "tiny-gen-production: MANAGE for release" in out and "experiment tests" in out

    # 2. the pipeline registers (a real generator, the real evaluate stage's metrics file)
    real = json.loads((ROOT / "metrics" / "eval.json").read_text())
    (proj / "metrics" / "eval.json").write_text(json.dumps({**real, **scores(0.8, 80.0)}))
    start = time.monotonic()
    first = _register(url, proj)
    seconds = time.monotonic() - start
    print(f"registration of a tiny run with {len(real)}+ metric groups on an auth-on server: {seconds:.1f} s")
    # 9-30 s here on a shared 2-core machine; the bound catches the minutes a per-request password check or a
    # per-metric history fetch cost (bench/registration_auth.py), not a busy neighbour
    assert first["version"] == "1" and seconds < 120, (first, seconds)
    make_outputs(proj, scores(0.82, 81.0), seed=3)
    assert _register(url, proj)["version"] == "2"

    # 3. refusals, all at once: one line each, exit 14, no password printed
    wrong = as_account("release", "wrong-password-123")
    refusals = {
        "reader promote": (as_account("reader"), "promote", "tiny-gen", "1"),
        "pipeline promote": (as_account("pipeline"), "promote", "tiny-gen", "1"),
        "pipeline rollback": (as_account("pipeline"), "rollback", "tiny-gen"),
        "reader release": (as_account("reader"), "release", "tiny-gen", "1"),
        "wrong list": (wrong, "list"),
        "wrong promote": (wrong, "promote", "tiny-gen", "1"),
        "wrong rollback": (wrong, "rollback", "tiny-gen"),
        "wrong release": (wrong, "release", "tiny-gen", "1"),
        "wrong reproduce": (wrong, "reproduce", "tiny-gen", "1", str(tmp_path / "rep")),
        "no login list": ({}, "list"),
        "reader setup": (as_account("reader"), "setup", "tiny-gen", "--pipeline", "reader", "--release", "reader"),
    }
    items = list(refusals.items())
    for batch in range(0, len(items), 4):  # a few at a time: the test server has one worker
        started = {what: _start(url, creds, proj, *args) for what, (creds, *args) in items[batch : batch + 4]}
        for what, proc in started.items():
            code, out, err = _finish(proc)
            line = _one_line(err)
            print(f"{what}: exit {code}: {line}")
            assert code == 14, (what, code, err[-2000:])
            assert "wrong-password-123" not in err + out
            if what.startswith("wrong"):
                assert "refused account 'release': wrong user name or password" in line, (what, line)
            elif what.startswith("no login"):
                assert "requires a login" in line, line
            elif what == "reader setup":
                assert "account 'reader' is not an admin" in line, line
            else:
                account = what.split()[0]
                assert f"account {account!r}" in line, (what, line)
    assert not (tmp_path / "rep").exists()

    # 4. the release manager's documented commands
    rm = as_account("release")
    code, out, err = _cli(url, rm, proj, "promote", "tiny-gen", "1")
    assert code == 0 and "tiny-gen-production v1 (from tiny-gen v1) is now champion" in out, out + err
    code, out, err = _cli(url, rm, proj, "promote", "tiny-gen", "2", "--reason", "better")
    assert code == 0 and "tiny-gen-production v2 (from tiny-gen v2) is now champion (was v1)" in out, out + err
    code, out, err = _cli(url, rm, proj, "rollback", "tiny-gen", "--reason", "regression")
    assert code == 0 and "tiny-gen-production: champion rolled back from v2 to v1" in out, out + err
    code, out, err = _cli(url, rm, proj, "promote", "tiny-gen", "2")  # the copy made before is reused
    assert code == 0 and "tiny-gen-production v2 (from tiny-gen v2)" in out, out + err
    assert "Traceback" not in err and "Creating a new version" not in err
    code, out, err = _cli(url, as_account("reader"), proj, "list", "tiny-gen-production")
    assert code == 0 and "champion" in out, out + err

    with account_env(as_account("reader")):
        client = MlflowClient(url, url)
        assert client.get_model_version_by_alias("tiny-gen-production", "champion").version == "2"
        assert client.get_model_version_by_alias("tiny-gen", "challenger").version == "2"
        trail = release_lock.audit_trail(client, "tiny-gen-production")
        assert [r["action"] for r in trail] == ["promote", "promote", "rollback", "promote"]
        assert all(r["by"].startswith("release") for r in trail)
        for lock in ("tiny-gen.release-lock", "tiny-gen-production.release-lock"):
            assert client.search_model_versions(f"name='{lock}'") == []  # every ticket given back
        # a reserved name cannot be taken again
        with pytest.raises(MlflowException, match="RESOURCE_ALREADY_EXISTS"):
            client.create_registered_model("tiny-gen-production")


def test_a_reader_cannot_take_hold_or_break_a_release_lock(server, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows import release_lock
    from twinflow_core.errors import TrackingError

    url, name = server, "lock-gen"
    with account_env(admin_env()):
        from flows.release import setup

        setup(url, name, pipeline="pipeline", release="release", experiment="lock-tests", log=lambda _: None)
    prod = "lock-gen-production"
    with account_env(as_account("reader")):
        reader = MlflowClient(url, url)
        with pytest.raises(
            TrackingError, match=r"account 'reader' lacks the permission to take the release lock lock-gen-production"
        ):
            with release_lock.release_lock(reader, prod, stale_after_s=0.0):
                pass
    with account_env(as_account("release")):
        rm = MlflowClient(url, url)
        with release_lock.release_lock(rm, prod):
            held = rm.search_model_versions(f"name='{prod}.release-lock'")
            assert len(held) == 1 and held[0].tags["holder"].startswith("release")
            with account_env(as_account("reader")):
                # neither a ticket of its own nor the holder's removal: MLflow refuses both
                for attempt in (
                    lambda: reader.create_model_version(f"{prod}.release-lock", "s3://x/y"),
                    lambda: reader.delete_model_version(f"{prod}.release-lock", held[0].version),
                    lambda: reader.set_model_version_tag(f"{prod}.release-lock", held[0].version, "holder", "forged"),
                ):
                    with pytest.raises(Exception, match="403"):
                        attempt()
            with account_env(as_account("pipeline")):  # the pipeline may not release either
                with pytest.raises(TrackingError, match="account 'pipeline' lacks the permission to take"):
                    with release_lock.release_lock(MlflowClient(url, url), prod, wait_s=1):
                        pass
            # a second release action waits, then says who holds it
            with pytest.raises(release_lock.ReleaseBusy, match=r"lock-gen-production\.release-lock \(by release"):
                with release_lock.release_lock(MlflowClient(url, url), prod, wait_s=0.5):
                    pass
        # a holder that died: its ticket is broken once stale, by an account that may take the lock
        ghost = rm.create_model_version(
            f"{prod}.release-lock", release_lock.TICKET_SOURCE, tags={"holder": "ghost"}, await_creation_for=0
        )
        with release_lock.release_lock(rm, prod, stale_after_s=0.0):
            live = rm.search_model_versions(f"name='{prod}.release-lock'")
            assert [v.version for v in live] != [ghost.version] and all(v.tags.get("holder") != "ghost" for v in live)
        assert rm.search_model_versions(f"name='{prod}.release-lock'") == []


def test_twinflow_run_checks_the_login_before_anything_runs(server, tmp_path):
    from support.pipeline import make_toy_project

    proj = make_toy_project(tmp_path / "proj")  # a real project: without the check, its stages would run
    start = time.monotonic()
    done = subprocess.run(
        [TWINFLOW, "run", "--workdir", str(proj), "--tracking-uri", server],
        cwd=proj,
        env=_env(as_account("pipeline", "wrong-password-123")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = _one_line(done.stderr)
    assert done.returncode == 14, done.stderr[-3000:]
    assert "refused account 'pipeline': wrong user name or password" in line and "wrong-password-123" not in line
    assert time.monotonic() - start < 60 and not (proj / "dvc.lock").exists()  # no stage ran


def test_the_cli_reaches_the_server_through_the_tls_proxy_only_with_https_and_the_teams_ca(server, tmp_path):
    why = tls_proxy.available()
    if why:
        pytest.skip(why)
    from support.pipeline import make_outputs, scores

    proj = make_outputs(tmp_path / "proj", scores(0.8, 80.0))
    ca = tls_proxy.make_cert(tmp_path / "certs")
    proxy = tls_proxy.start(
        tmp_path, tmp_path / "certs", server.removeprefix("http://"), f"127.0.0.1:{free_port()}", TLS_PORT, free_port()
    )
    try:
        tls, plain = f"https://localhost:{TLS_PORT}", f"http://localhost:{TLS_PORT}"
        reader = as_account("reader")
        code, out, err = _cli(tls, {**reader, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca)}, proj, "list")
        assert code == 0 and "Traceback" not in err, out + err
        code, out, err = _cli(tls, reader, proj, "list")  # the team's CA not trusted: stopped before the login
        assert code == 14 and "TLS check failed (certificate verify failed)" in _one_line(err), err
        code, out, err = _cli(plain, reader, proj, "list")  # plain HTTP: refused by the proxy
        assert code == 10 and f"speaks TLS only: use {tls}" in _one_line(err), err
    finally:
        stop(proxy)
