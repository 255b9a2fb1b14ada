"""Workflows end to end in one process: the real runner and store writer handlers on real
Unix sockets, real agents and photographs, the real encrypted store; no supervisord
(that is tests/integration). Covers the inbox rules, failures, crash recovery,
back-pressure, the socket trigger, chained steps and the interval trigger.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbox import ipc
from fieldbox.budget import DataBudget, InboxBudget
from fieldbox.errors import BusyError, ConfigError, InputError
from fieldbox.services import RUNNER_SOCKET, STORE_SOCKET
from fieldbox.services import runner as runner_service
from fieldbox.services.runner import RunnerService
from fieldbox.services.store import StoreWriter
from fieldbox.services.workflows import WorkflowsService
from fieldbox.store import Store, default_db_path
from fieldbox.workflows.engine import FAILED_EVENT
from fieldbox.workflows.inbox import Inbox, display_name, is_candidate
from fieldbox.workflows.items import result_keys
from fieldbox.workflows.spec import InboxTrigger, WorkflowSpec, parse_workflow
from fieldbox_host.photos import drop, variants

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "build" / "assets"
AGENTS = REPO / "rootfs-overlay" / "etc" / "fieldbox" / "agents"
log = logging.getLogger("test")

KEEP_DONE = DataBudget(inbox=InboxBudget(keep_done=True))
"""Most tests here check where each input ended (done/ or failed/), so they keep the copies."""


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def workflow(name: str = "faces", **overrides: Any) -> WorkflowSpec:
    raw: dict[str, Any] = {
        "name": name,
        "trigger": {"inbox": {"dir": "inbox", "poll_seconds": 0.05, "settle_seconds": 0.0}, "socket": {}},
        "steps": [{"agent": "face-detector"}],
        "sinks": {"store": {"priority": 2}, "log": {}},
        "queue": {"size": 4, "workers": 2},
    }
    raw.update(overrides)
    return parse_workflow(raw, f"{name}.toml")


class Stack:
    """Runner + store writer served on sockets in this process, and a workflows service."""

    def __init__(
        self, data: Path, run: Path, agents_dir: Path = AGENTS, budget: DataBudget = KEEP_DONE
    ) -> None:
        self.data, self.run = data, run
        self.budget = budget
        self.runner = RunnerService.load(agents_dir, log)
        self.writer = StoreWriter(default_db_path())
        self.writer.start()
        self.store_server = ipc.Server(run / STORE_SOCKET, self.writer.handle, name="store")
        self.store_server.start()
        self.runner_server: ipc.Server | None = None
        self.stop = threading.Event()
        self.service: WorkflowsService | None = None

    def start_runner(self) -> None:
        self.runner_server = ipc.Server(self.run / RUNNER_SOCKET, self.runner.handle, name="runner")
        self.runner_server.start()

    def start_workflows(self, *specs: WorkflowSpec) -> WorkflowsService:
        self.service = WorkflowsService({s.name: s for s in specs}, self.data, self.stop, budget=self.budget)
        self.service.start()
        return self.service

    def close(self) -> None:
        self.stop.set()
        if self.service is not None:
            self.service.join(10)
        if self.runner_server is not None:
            self.runner_server.shutdown()
        self.store_server.shutdown()
        self.writer.stop()

    def store(self) -> Store:
        return Store.open(default_db_path(), create=False)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    if not (ASSETS / "face_detection_short_range.tflite").exists():
        pytest.fail("build/assets is missing: run `make assets` (make test does)")
    run = Path(tempfile.mkdtemp(prefix="fbx-"))  # short: socket paths are limited to 107 bytes
    data = tmp_path / "data"
    monkeypatch.setenv("FIELDBOX_DATA", str(data))
    monkeypatch.setenv("FIELDBOX_RUN", str(run))
    monkeypatch.setenv("FIELDBOX_MODELS", f"{ASSETS}{os.pathsep}{REPO / 'build' / 'models'}")
    s = Stack(data, run)
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(run, ignore_errors=True)


def photos(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    return list(variants(ASSETS, n, seed=seed))


# ------------------------------------------------------------------------- inbox rules


def test_which_files_are_taken(tmp_path: Path):
    assert is_candidate("a.jpg", "*")
    assert is_candidate("a.jpg", "*.jpg") and not is_candidate("a.png", "*.jpg")
    for name in (".a.jpg", "a.jpg.tmp", "a.part", "a.partial", "a.jpg.reason"):
        assert not is_candidate(name, "*")
    inbox = Inbox(tmp_path, InboxTrigger(settle_seconds=5.0), "processing/x")
    inbox.ensure_dirs()
    (tmp_path / "inbox" / "old.jpg").write_bytes(b"1")
    os.utime(tmp_path / "inbox" / "old.jpg", (time.time() - 60, time.time() - 60))
    (tmp_path / "inbox" / "fresh.jpg").write_bytes(b"2")  # still being written, as far as we know
    (tmp_path / "inbox" / "sub").mkdir()
    assert [p.name for p in inbox.ready()] == ["old.jpg"]
    assert [p.name for p in inbox.ready(now=time.time() + 10)] == ["old.jpg", "fresh.jpg"]


def test_what_is_left_in_the_inbox_is_explained_once(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    inbox = Inbox(tmp_path, InboxTrigger(settle_seconds=0, glob="*.jpg"), "processing/x")
    inbox.ensure_dirs()
    (tmp_path / "inbox" / "album").mkdir()
    (tmp_path / "inbox" / "notes.txt").write_text("x")
    (tmp_path / "inbox" / "fresh.jpg.tmp").write_text("x")
    old = tmp_path / "inbox" / "abandoned.jpg.part"
    old.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with caplog.at_level(logging.WARNING, logger="fieldbox.workflows.inbox"):
        assert inbox.ready() == [] and inbox.ready() == []
    said = sorted(r.getMessage().split(": ", 1)[1] for r in caplog.records)
    assert said == [
        "abandoned.jpg.part has a temporary name and has not changed for 2 h (rename it when complete); "
        "left where it is",
        "album is a directory (only files are taken); left where it is",
        "notes.txt does not match glob '*.jpg'; left where it is",
    ]


def test_moves_never_overwrite(tmp_path: Path):
    inbox = Inbox(tmp_path, InboxTrigger(settle_seconds=0), "processing/x")
    inbox.ensure_dirs()
    for content in (b"first", b"second"):
        (tmp_path / "inbox" / "a.jpg").write_bytes(content)
        claimed = inbox.claim(tmp_path / "inbox" / "a.jpg")
        assert claimed is not None
        inbox.finish(claimed, keep=True)
    assert files(tmp_path / "done") == ["a.jpg", "a~1.jpg"]
    assert (tmp_path / "done" / "a~1.jpg").read_bytes() == b"second"
    # a name still being processed stays in the inbox
    (tmp_path / "inbox" / "b.jpg").write_bytes(b"1")
    first = inbox.claim(tmp_path / "inbox" / "b.jpg")
    (tmp_path / "inbox" / "b.jpg").write_bytes(b"2")
    assert inbox.claim(tmp_path / "inbox" / "b.jpg") is None
    assert first is not None
    inbox.fail(first, "bad\nthing")
    assert (tmp_path / "failed" / "b.jpg.reason").read_text() == "bad thing\n"


def test_names_that_are_not_utf8_become_escapes_and_utf8_stays() -> None:
    assert display_name(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert display_name("café 東京.jpg") == "café 東京.jpg"
    assert display_name(os.fsdecode(b"\xff\xfe")).encode("utf-8") == b"\\xff\\xfe"


def test_finish_deletes_the_input_unless_kept(tmp_path: Path):
    inbox = Inbox(tmp_path, InboxTrigger(settle_seconds=0), "processing/x")
    inbox.ensure_dirs()
    (tmp_path / "inbox" / "a.jpg").write_bytes(b"plaintext photo")
    claimed = inbox.claim(tmp_path / "inbox" / "a.jpg")
    assert claimed is not None
    inbox.finish(claimed)
    assert files(tmp_path / "done") == [] and files(tmp_path / "processing" / "x") == []


# ----------------------------------------------------------------------- the pipeline


def test_processed_inputs_leave_no_plaintext_copy_by_default(tmp_path: Path, stack: Stack):
    stack.budget = DataBudget()
    stack.start_runner()
    service = stack.start_workflows(workflow())
    items = photos(4)
    for name, data in items:
        drop(stack.data / "inbox", name, data)
    wait_for(lambda: service.status()["workflows"]["faces"]["done"] == len(items), what="all items done")
    wait_for(lambda: files(stack.data / "processing" / "faces") == [], what="processing/ emptied")
    assert files(stack.data / "inbox") == [] and files(stack.data / "done") == []
    with stack.store() as store:
        assert len(store.results("faces", limit=100)) == len(items)


def test_inbox_items_stored_exactly_once_then_done(stack: Stack):
    stack.start_runner()
    service = stack.start_workflows(workflow())
    items = photos(24)
    for name, data in items:
        drop(stack.data / "inbox", name, data)
    wait_for(lambda: len(files(stack.data / "done")) == len(items), what="all files in done/")
    assert files(stack.data / "inbox") == []
    assert files(stack.data / "processing" / "faces") == []
    expected = {k for name, data in items for k in result_keys("faces", name, data, 1)}
    with stack.store() as store:
        rows = store.results("faces", limit=1000)
    assert {r.key for r in rows} == expected and len(rows) == len(items)
    by_item = {r.item: r for r in rows}
    assert all(r.priority == 2 and r.agent == "face-detector" for r in rows)
    astronauts = [r for name, r in by_item.items() if "astronaut" in name]
    assert astronauts and any(r.result["detections"] for r in astronauts)
    status = service.status()
    assert status["workflows"]["faces"]["done"] == len(items)
    assert status["services"] == {"runner": "up", "store": "up"}


def test_bad_items_fail_with_reasons_and_the_rest_succeed(stack: Stack):
    stack.start_runner()
    stack.start_workflows(workflow())
    good = photos(6)
    jpeg = next(data for name, data in photos(3, seed=5) if name.endswith(".jpg"))
    inbox = stack.data / "inbox"
    drop(inbox, "truncated.jpg", jpeg[: len(jpeg) // 3])
    drop(inbox, "empty.jpg", b"")
    drop(inbox, "text.jpg", b"this is not an image at all\n" * 20)
    os.symlink("/etc/hostname", inbox / "link.jpg")
    os.mkfifo(inbox / "pipe.jpg")  # reading it must not block the worker
    for name, data in good:
        drop(inbox, name, data)
    wait_for(lambda: len(files(stack.data / "done")) == len(good), what="good files in done/")
    wait_for(lambda: len(files(stack.data / "failed")) == 10, what="bad files and reasons in failed/")
    failed = stack.data / "failed"
    bad = ("truncated.jpg", "empty.jpg", "text.jpg", "link.jpg", "pipe.jpg")
    reasons = {n: (failed / f"{n}.reason").read_text() for n in bad}
    assert "empty file" in reasons["empty.jpg"]
    assert "symbolic link" in reasons["link.jpg"]
    assert "not a regular file" in reasons["pipe.jpg"]
    for text in reasons.values():
        assert text.endswith("\n") and text.count("\n") == 1 and len(text) > 10
    with stack.store() as store:
        assert store.count_results("faces") == len(good)
        events = store.events(FAILED_EVENT, limit=100)
    assert {e.detail["item"] for e in events} == set(reasons)


def test_a_model_that_fails_to_load_holds_its_items_until_a_fixed_one_arrives(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(runner_service, "RELOAD_S", 0.5)
    agents = tmp_path / "agents"
    agents.mkdir()
    text = (AGENTS / "face-detector.toml").read_text()
    sha = text.split('sha256 = "')[1].split('"')[0]
    (agents / "face-detector.toml").write_text(text.replace(sha, "0" * 64))
    stack.runner = RunnerService.load(agents, log)
    assert "face-detector" in stack.runner.broken
    stack.start_runner()
    service = stack.start_workflows(workflow())
    name, data = photos(1)[0]
    drop(stack.data / "inbox", name, data)

    def faces() -> dict[str, Any]:
        return service.status()["workflows"]["faces"]

    wait_for(lambda: "face-detector is not available" in faces()["last_error"], what="the held item's reason")
    assert "sha256" in faces()["last_error"]
    time.sleep(1.0)  # retried, not failed: the photo is fine, the model is not
    assert files(stack.data / "failed") == [] and files(stack.data / "processing" / "faces") == [name]
    assert faces()["failed"] == 0 and faces()["retries"] >= 1
    (agents / "face-detector.toml").write_text(text)  # the fixed model arrives
    wait_for(lambda: faces()["done"] == 1, what="the held item done with the fixed model")
    assert "face-detector" in stack.runner.agents and "face-detector" not in stack.runner.broken
    with stack.store() as store:
        assert store.count_results("faces") == 1


def test_crash_recovery_retries_processing_without_duplicates(stack: Stack):
    (name_a, data_a), (name_b, data_b) = photos(2)
    processing = stack.data / "processing" / "faces"
    processing.mkdir(parents=True)
    # A: the previous run committed its result, then died before moving the file.
    (processing / name_a).write_bytes(data_a)
    key_a = result_keys("faces", name_a, data_a, 1)[0]
    with Store.open(default_db_path()) as store:
        store.put_result(key_a, "faces", "face-detector", name_a, {"detections": []}, 2)
    # B: the previous run died before committing anything.
    (processing / name_b).write_bytes(data_b)
    stack.start_runner()
    service = stack.start_workflows(workflow())
    wait_for(lambda: files(stack.data / "done") == sorted([name_a, name_b]), what="both in done/")
    assert files(processing) == []
    with stack.store() as store:
        keys = [r.key for r in store.results("faces")]
    assert sorted(keys) == sorted([key_a, *result_keys("faces", name_b, data_b, 1)])
    assert service.status()["workflows"]["faces"]["duplicates"] == 1


def test_back_pressure_holds_files_in_the_inbox_until_the_runner_is_up(stack: Stack):
    service = stack.start_workflows(workflow(queue={"size": 3, "workers": 1}))
    items = photos(10)
    for name, data in items:
        drop(stack.data / "inbox", name, data)
    engine = service.engines["faces"]
    wait_for(lambda: engine.counters["retries"] > 0, what="the worker retrying the missing runner")
    time.sleep(0.5)
    # only as many files as the queue holds were taken; the rest wait in the inbox
    assert len(files(stack.data / "processing" / "faces")) == 3
    assert len(files(stack.data / "inbox")) == 7
    with pytest.raises(BusyError, match="busy"):
        from fieldbox.workflows.triggers import submit_and_wait

        submit_and_wait(engine, "x.jpg", items[0][1], timeout=1)
    stack.start_runner()
    wait_for(lambda: len(files(stack.data / "done")) == 10, what="all done once the runner is up")
    with stack.store() as store:
        assert store.count_results("faces") == 10


def test_socket_submissions(stack: Stack):
    stack.start_runner()
    service = stack.start_workflows(workflow(trigger={"socket": {}}))
    path = stack.run / "workflows.sock"
    with ipc.serving(path, service.handle, name="workflows"):
        from fieldbox.services.clients import WorkflowsClient

        client = WorkflowsClient(path)
        name, data = next((n, d) for n, d in photos(6) if "astronaut" in n)
        reply = client.submit("faces", name, data)
        assert reply["stored"] == 1 and reply["duplicate"] is False
        assert reply["results"][0]["detections"]
        again = client.submit("faces", name, data)
        assert again["stored"] == 0 and again["duplicate"] is True
        with pytest.raises(InputError, match="cannot|image|decode"):
            client.submit("faces", "bad.jpg", b"\xff\xd8\xff\xe0 truncated")
        with pytest.raises(ConfigError, match="no workflow named 'nope'"):
            client.submit("nope", name, data)
        status = client.status()
        client.close()
    assert status["workflows"]["faces"]["done"] == 2
    assert status["workflows"]["faces"]["failed"] == 1
    with stack.store() as store:
        assert store.count_results("faces") == 1


def test_chained_steps_get_the_previous_result(stack: Stack):
    stack.start_runner()
    spec = workflow(
        steps=[{"agent": "face-detector"}, {"agent": "text-classifier", "input": "previous"}],
    )
    stack.start_workflows(spec)
    items = photos(3)
    for name, data in items:
        drop(stack.data / "inbox", name, data)
    wait_for(lambda: len(files(stack.data / "done")) == 3, what="chained items done")
    with stack.store() as store:
        rows = store.results("faces")
    assert {r.key for r in rows} == {k for n, d in items for k in result_keys("faces", n, d, 2)}
    assert {r.agent for r in rows if r.key.endswith("#1")} == {"text-classifier"}


def test_interval_trigger_reads_its_source(stack: Stack):
    stack.start_runner()
    source = stack.data / "camera" / "latest.jpg"
    source.parent.mkdir(parents=True)
    source.write_bytes(photos(1)[0][1])
    spec = workflow(
        name="snap",
        trigger={"interval": {"every_seconds": 0.1, "source": {"path": "camera/latest.jpg"}}},
        sinks={"store": {"priority": 7}},
    )
    stack.start_workflows(spec)
    wait_for(lambda: stack.service is not None and stack.service.engines["snap"].counters["done"] >= 3,
             what="three ticks")
    with stack.store() as store:
        rows = store.results("snap")
    assert len(rows) >= 3 and all(r.item.startswith("tick-") and r.priority == 7 for r in rows)


@pytest.mark.parametrize("contents", [False, True])
def test_the_log_sink_writes_results_only_when_told(
    stack: Stack, caplog: pytest.LogCaptureFixture, contents: bool
) -> None:
    stack.start_runner()
    sinks: dict[str, Any] = {"store": {"priority": 2}, "log": {"contents": contents}}
    service = stack.start_workflows(workflow(sinks=sinks))
    name, data = next(iter(photos(1, seed=7)))
    with caplog.at_level(logging.INFO, logger="fieldbox.workflows.engine"):
        drop(stack.data / "inbox", name, data)
        wait_for(lambda: service.status()["workflows"]["faces"]["done"] == 1, what="the item done")
    lines = [r.getMessage() for r in caplog.records if name in r.getMessage() and " -> " in r.getMessage()]
    assert len(lines) == 1
    assert ("detections" in lines[0]) is contents, lines[0]


# ------------------------------------------------------------- anything a camera may write

_NAME_BYTES = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b"..")
)


def _taken(raw: bytes) -> bool:
    """Whether the inbox takes a file of this name at all (dotfiles and *.tmp etc. are writes in progress)."""
    return is_candidate(os.fsdecode(raw), "*")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_NAME_BYTES.filter(_taken), min_size=1, max_size=6, unique=True))
def test_any_name_a_filesystem_holds_ends_with_a_result_or_a_reason(stack: Stack, names: list[bytes]) -> None:
    if stack.service is None:
        stack.start_runner()
        stack.start_workflows(workflow())
    assert stack.service is not None
    inbox = stack.data / "inbox"
    _, data = photos(1, seed=3)[0]
    before = stack.service.status()["workflows"]["faces"]
    for raw in names:
        (inbox / os.fsdecode(raw)).write_bytes(data)  # surrogateescape: the name's bytes exactly
    service = stack.service

    def ended() -> int:
        counters = service.status()["workflows"]["faces"]
        return int(counters["done"] + counters["failed"])

    want = before["done"] + before["failed"] + len(names)
    wait_for(lambda: ended() == want, timeout=120, what="every file ended")  # slack for a loaded CI host
    wait_for(lambda: os.listdir(inbox) == [], timeout=60, what="the inbox empty")
    for raw in names:
        if (stack.data / "failed" / os.fsdecode(raw)).exists():
            reason = (stack.data / "failed" / os.fsdecode(raw + b".reason")).read_bytes()
            assert reason.count(b"\n") == 1 and len(reason) > 5
    assert service.status()["workflows"]["faces"]["failed"] == before["failed"], "a good photo failed"
    with stack.store() as store:
        stored = {r.item for r in store.results("faces", limit=10_000)}
    assert {display_name(os.fsdecode(raw)) for raw in names} <= stored


def test_a_worker_that_dies_is_replaced_and_its_poison_item_fails_after_three_deaths(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    stack.start_runner()
    service = stack.start_workflows(workflow(queue={"size": 4, "workers": 1}))
    engine = service.engines["faces"]
    original_process = engine.process

    def dying(item: Any, runner: Any, store: Any) -> Any:
        if item.name.startswith("poison"):
            raise SystemError("worker killed")  # an error process() itself lets out: the thread dies
        return original_process(item, runner, store)

    monkeypatch.setattr(engine, "process", dying)
    (p_name, p_data), (g_name, g_data) = photos(2, seed=9)
    drop(stack.data / "inbox", "poison-" + p_name, p_data)
    drop(stack.data / "inbox", g_name, g_data)

    def faces() -> dict[str, Any]:
        return service.status()["workflows"]["faces"]

    wait_for(lambda: faces()["done"] == 1 and faces()["failed"] == 1, what="poison failed, good done")
    assert faces()["worker_deaths"] == 3 and faces()["workers_alive"] == 1
    reason = (stack.data / "failed" / f"poison-{p_name}.reason").read_text()
    assert "its worker died 3 times: SystemError: worker killed" in reason
