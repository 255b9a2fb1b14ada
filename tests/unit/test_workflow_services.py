"""The runner and store writer request handlers over real sockets, and the engine's retry rules."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldbox import ipc
from fieldbox.errors import (
    AgentUnavailableError,
    InputError,
    ProtocolError,
    ServiceUnavailableError,
)
from fieldbox.services.clients import RunnerClient, StoreClient
from fieldbox.services.runner import RunnerService
from fieldbox.services.store import StoreWriter
from fieldbox.store import FileKeyProvider, Store
from fieldbox.workflows.engine import Backoff, WorkflowEngine
from fieldbox.workflows.items import Item
from fieldbox.workflows.spec import parse_workflow

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "build" / "assets"
AGENTS = REPO / "rootfs-overlay" / "etc" / "fieldbox" / "agents"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store_service(tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreWriter]:
    monkeypatch.setenv("FIELDBOX_DATA", str(tmp_path))
    writer = StoreWriter(tmp_path / "store" / "fieldbox.db")
    writer.start()
    with ipc.serving(run_dir / "store.sock", writer.handle, name="store"):
        yield writer
    writer.stop()


def row(key: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "workflow": "wf", "agent": "a", "item": f"{key}.jpg", "result": {"n": 1},
            "priority": 3} | extra


def test_store_writer_commits_acknowledges_and_deduplicates(store_service: StoreWriter, run_dir: Path,
                                                           tmp_path: Path):
    client = StoreClient(run_dir / "store.sock")
    assert client.put_results([row("a"), row("b")]) == [True, True]
    assert client.put_results([row("b"), row("c"), row("c")]) == [False, True, False]
    assert client.count("wf") == 3
    for bad, message in [
        ([{"key": "x"}], "has no 'workflow'"),
        ([row("x", priority=10)], "priority must be 0..9"),
        ([row("x", result=[1])], "'result' must be an object"),
        ([row("")], "non-empty text"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            client.put_results(bad)
    with pytest.raises(ProtocolError, match="not JSON"):
        client.ipc.call("put", b"{nope")
    client.close()
    # parallel writers: every acknowledged result is there, once
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        c = StoreClient(run_dir / "store.sock")
        try:
            for i in range(25):
                assert c.put_results([row(f"t{n}-{i}")]) == [True]
        except BaseException as exc:
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert store_service.committed == 153
    with Store.open(tmp_path / "store" / "fieldbox.db", keys=FileKeyProvider(tmp_path / "keys" / "kek"),
                    create=False) as store:
        assert store.count_results("wf") == 153


def test_runner_service_answers_and_refuses(run_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FIELDBOX_MODELS", f"{ASSETS}{os.pathsep}{REPO / 'build' / 'models'}")
    service = RunnerService.load(AGENTS, logging.getLogger("test"))
    with ipc.serving(run_dir / "runner.sock", service.handle, name="runner"):
        client = RunnerClient(run_dir / "runner.sock")
        assert "face-detector" in client.ping()["agents"]
        result, raw = client.run("face-detector", (ASSETS / "astronaut.png").read_bytes())
        assert result["detections"] and raw.startswith(b"{")
        with pytest.raises(InputError):
            client.run("face-detector", b"GIF89a broken")
        with pytest.raises(AgentUnavailableError, match="no agent named 'nope'"):
            client.run("nope", b"x")
        assert client.stats()["face-detector"]
        client.close()


class _DyingRunner:
    """A runner that dies while handling every request (a poison pill, from the client's side)."""

    calls = 0

    def run(self, agent: str, data: bytes) -> tuple[dict[str, Any], bytes]:
        _DyingRunner.calls += 1
        raise ipc.ConnectionLostError("runner service closed the connection during 'run'")

    def close(self) -> None:
        pass


class _NullStore:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def put_results(self, rows: Any) -> list[bool]:
        raise AssertionError("nothing should be stored")

    def add_event(self, kind: str, detail: dict[str, Any]) -> int:
        self.events.append(detail)
        return 1

    def close(self) -> None:
        pass


def test_an_item_that_keeps_killing_the_runner_fails_instead_of_looping():
    spec = parse_workflow({"name": "wf", "trigger": {"socket": {}}, "steps": [{"agent": "a"}],
                           "sinks": {"log": {}}})
    engine = WorkflowEngine(spec, _DyingRunner, _NullStore)
    store = _NullStore()
    outcome = engine.process(Item("wf", "x.jpg", "socket", data=b"x"), _DyingRunner(), store)
    assert not outcome.ok and "went away 3 times" in outcome.reason
    assert _DyingRunner.calls == 3
    assert store.events[-1]["item"] == "x.jpg"


def test_backoff_grows_to_its_cap():
    b = Backoff(first=0.1, cap=1.0)
    delays = [b.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1 and max(delays) <= 1.0 and delays[-1] >= 0.5
    b.reset()
    assert b.next() <= 0.1


def test_unreachable_services_are_transient():
    from fieldbox.workflows.engine import is_transient

    assert is_transient(ServiceUnavailableError("x"))
    assert is_transient(ipc.ConnectionLostError("x"))
    assert not is_transient(InputError("x"))
