"""Concurrent release actions against a real `mlflow server` on 127.0.0.1 (sqlite store): many promotions and
rollbacks at once leave one champion, a `champion_history` that lost no move, and an audit trail (who, when, why,
the gate verdict, the previous champion) whose replay gives exactly the final champion and history
(flows/release_lock.py says why this is safe)."""

from __future__ import annotations

import json
import threading

import pytest
from support.pipeline import GATE, scores, start_mlflow_server, stop

from flows import registry, release_lock
from flows.gating import GateConfig

NAME = "race-gen"


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, uri)


def _versions(uri: str, n: int) -> list[str]:
    """n versions of one model whose recorded scores pass the gate (a tiny logged artifact each)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = _client(uri)
    client.create_registered_model(NAME)
    out = []
    for i in range(n):
        with mlflow.start_run() as run:
            mlflow.log_text(f"weights {i}", "model/weights.txt")
        mv = client.create_model_version(
            NAME,
            f"runs:/{run.info.run_id}/model",
            run.info.run_id,
            tags={"scores": json.dumps(scores(0.8 + i / 100, 80.0))},
        )
        out.append(str(mv.version))
    return out


def _all_at_once(actions) -> list[BaseException | str]:
    barrier = threading.Barrier(len(actions))
    results: list = [None] * len(actions)

    def go(i, fn):
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as err:  # noqa: BLE001 - collected and judged by the test
            results[i] = err

    threads = [threading.Thread(target=go, args=(i, fn)) for i, fn in enumerate(actions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _replay(trail: list[dict]) -> tuple[str | None, list[str]]:
    """Champion and history as the audit records say they moved, each record checked against the one before."""
    champion, history = None, []
    for n, rec in enumerate(trail, start=1):
        assert rec["seq"] == n and rec["previous"] == champion, (n, rec, champion)
        assert rec["by"] and rec["at"] and "verdict" in rec and "reason" in rec
        if rec["action"] == "rollback":
            while history and history[-1] == rec["previous"]:
                history.pop()
            assert history[-1] == rec["champion"]
        elif not history or history[-1] != rec["champion"]:
            history.append(rec["champion"])
        champion = rec["champion"]
    return champion, history


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    uri, proc = start_mlflow_server(tmp_path_factory.mktemp("server"))
    yield uri
    stop(proc)


@pytest.fixture(autouse=True)
def quick_client_retries(monkeypatch):
    """A busy one-worker server may reset a connection; MLflow's client retries it, by default after 2, 4, 8 s
    (backoff factor 2; MLflow reads the factor as an integer, so 1 is the smallest that still backs off)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


@pytest.mark.slow
def test_concurrent_promotions_and_rollbacks_leave_one_champion_and_a_consistent_trail(server):
    uri = server
    gate = GateConfig.from_params({"gate": GATE})
    versions = _versions(uri, 4)
    # 1. four promotions of four versions at once: every one of them is in the history, none lost
    results = _all_at_once(
        [lambda v=v: registry.promote(_client(uri), NAME, v, gate, reason=f"race {v}") for v in versions]
    )
    assert all(isinstance(r, str) and "is now champion" in r for r in results), results
    client = _client(uri)
    history = client.get_registered_model(NAME).tags[registry.HISTORY_TAG].split(",")
    assert sorted(history, key=int) == versions, history
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    assert champion == history[-1]
    # 2. promotions and rollbacks mixed, at once
    mixed = [lambda v=v: registry.promote(_client(uri), NAME, v, gate, reason="mixed") for v in versions[:3]]
    mixed += [lambda: registry.rollback(_client(uri), NAME, reason="mixed")] * 3
    results = _all_at_once(mixed)
    assert all(isinstance(r, str) for r in results), results
    client = _client(uri)
    model = client.get_registered_model(NAME)
    trail = release_lock.audit_trail(client, NAME)
    assert len(trail) == 4 + 6 and [r["action"] for r in trail].count("rollback") == 3
    champion, history = _replay(trail)
    assert model.aliases == {"champion": champion}
    assert model.tags[registry.HISTORY_TAG].split(",") == history
    # the promoted versions' tags name the audit record, its previous champion, the gate's re-check
    for rec in trail:
        if rec["action"] == "promote":
            tags = client.get_model_version(NAME, rec["champion"]).tags
            assert tags["promotion.gate_recheck"] == "passed" == rec["verdict"]
    assert client.search_model_versions(f"name='{release_lock.lock_name(NAME)}'") == []  # every ticket given back
    assert [r["name"] for r in registry.list_versions(client)] == [NAME] * 4


@pytest.mark.slow
def test_a_held_lock_makes_a_second_action_wait_then_say_who_holds_it(server):
    uri = server
    client = _client(uri)
    with release_lock.release_lock(client, NAME):
        with pytest.raises(release_lock.ReleaseBusy, match=r"race-gen\.release-lock \(by .* since "):
            with release_lock.release_lock(_client(uri), NAME, wait_s=0.5):
                pass
    # a holder that died: its ticket is broken once stale, and only that ticket
    lock = release_lock.lock_name(NAME)
    ghost = client.create_model_version(lock, release_lock.TICKET_SOURCE, tags={"holder": "ghost"})
    with release_lock.release_lock(client, NAME, stale_after_s=0.0):
        live = client.search_model_versions(f"name='{lock}'")
        assert ghost.version not in [v.version for v in live] and len(live) == 1
    # a live holder (younger than stale_after_s, on the server's clock) is waited for, never broken
    with release_lock.release_lock(client, NAME):
        with pytest.raises(release_lock.ReleaseBusy):
            with release_lock.release_lock(_client(uri), NAME, wait_s=0.5, stale_after_s=30.0):
                pass
    assert client.search_model_versions(f"name='{lock}'") == []
