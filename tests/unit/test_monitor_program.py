"""The merged ``monitor`` program: its listener keeps answering supervisord whatever the sampler and store do.

In-process: :func:`fieldbox.services.monitor.run_monitor` with a sampler that
blocks until the test lets it go and no store writer at all; the protocol
loop must acknowledge every event meanwhile. Then the real entry point
(``python3 -m fieldbox.services.monitor``) over pipes, as supervisord runs it:
only protocol bytes on stdout, clean exit on SIGTERM and on a closed stdin.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from fieldbox.monitor.config import MonitorConfig
from fieldbox.monitor.sampler import Sample
from fieldbox.monitor.telemetry import TelemetryBuffer
from fieldbox.services import monitor
from fieldbox.services.clients import StoreClient

READY = b"READY\n"
OK = b"RESULT 2\nOK"
BODY = "processname:runner groupname:runner from_state:RUNNING expected:0 pid:{pid}"
HANG_GUARD_S = 30.0
"""Only so a broken listener fails the test instead of hanging it (not a speed target)."""


def notification(serial: int) -> bytes:
    body = BODY.format(pid=1000 + serial)
    header = (
        f"ver:3.0 server:supervisor serial:{serial} pool:monitor poolserial:{serial} "
        f"eventname:PROCESS_STATE_EXITED len:{len(body)}\n"
    )
    return (header + body).encode()


def read_exactly(fd: int, n: int) -> bytes:
    """``n`` bytes from ``fd``, or fail after :data:`HANG_GUARD_S`."""
    got = b""
    while len(got) < n:
        ready, _, _ = select.select([fd], [], [], HANG_GUARD_S)
        assert ready, f"listener silent; got {got!r} so far"
        chunk = os.read(fd, n - len(got))
        assert chunk, f"listener closed stdout; got {got!r}"
        got += chunk
    return got


def exchange(to_listener: int, from_listener: int, serials: range) -> None:
    """Send each event after the listener's READY and expect its ``RESULT 2\\nOK``."""
    for serial in serials:
        assert read_exactly(from_listener, len(READY)) == READY
        os.write(to_listener, notification(serial))
        assert read_exactly(from_listener, len(OK)) == OK


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbx-"))  # short: a socket path has a 107-byte limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_listener_answers_while_the_sampler_is_stuck_and_no_store_exists(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(monitor, "EVENTS_CLOSE_S", 0.2)
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def sample() -> list[Sample]:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            assert release.wait(HANG_GUARD_S)
        if calls == 2:
            raise RuntimeError("sensor exploded")  # a bug in one sample: logged, sampling goes on
        return [("cpu.percent", float(calls), None)]

    absent = run_dir / "store.sock"  # nobody serves it
    telemetry, events = StoreClient(absent, timeout=1), StoreClient(absent, timeout=1)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    stdin: IO[str] = os.fdopen(in_r, "r", encoding="utf-8")
    stdout: IO[str] = os.fdopen(out_w, "w", encoding="utf-8")
    stop = threading.Event()
    result: list[TelemetryBuffer] = []
    log = logging.getLogger("fieldbox.services.monitor")
    with caplog.at_level(logging.INFO):
        worker = threading.Thread(
            target=lambda: result.append(
                monitor.run_monitor(
                    MonitorConfig(interval_s=0.05, flush_s=0.1), stop, log, stdin=stdin, stdout=stdout,
                    sample=sample, telemetry=telemetry, send_event=events.add_event,
                )
            )
        )
        worker.start()
        try:
            assert entered.wait(HANG_GUARD_S)
            exchange(in_w, out_r, range(1, 6))  # the sampler is stuck in its first sample all along
            assert calls == 1 and not release.is_set()
            release.set()
            while calls < 4:
                stop.wait(0.05)  # sampling resumes: a failed sample, failed flushes, samples kept
            exchange(in_w, out_r, range(6, 8))
        finally:
            release.set()
            stop.set()
            worker.join(HANG_GUARD_S)
            os.close(in_w)
            os.close(out_r)
            telemetry.close()
            events.close()
    assert not worker.is_alive()
    (buffer,) = result
    assert buffer.flushes == 0 and len(buffer.pending) >= 2  # nothing lost while the store is down
    messages = [r.getMessage() for r in caplog.records]
    assert any("sample failed" in m for m in messages)
    assert any("cannot write telemetry" in m for m in messages)
    unsent = [m for m in messages if "event not recorded (listener stopping)" in m]
    assert len(unsent) == 7 and all(f"'pid': {1000 + i}" in "\n".join(unsent) for i in range(1, 8))


def _start(tmp_path: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "monitor.toml").write_text("interval_s = 0.2\nflush_s = 0.5\n")
    env = {**os.environ, "FIELDBOX_DATA": str(tmp_path), "FIELDBOX_ETC": str(etc),
           "FIELDBOX_RUN": str(run_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "fieldbox.services.monitor"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )


def test_entry_point_keeps_stdout_for_the_protocol_and_flushes_on_sigterm(
    tmp_path: Path, run_dir: Path
) -> None:
    proc = _start(tmp_path, run_dir)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        exchange(proc.stdin.fileno(), proc.stdout.fileno(), range(1, 4))
        assert read_exactly(proc.stdout.fileno(), len(READY)) == READY
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(HANG_GUARD_S)
    finally:
        proc.kill()
        proc.wait()
    rest = proc.stdout.read()
    err = proc.stderr.read().decode()
    assert code == 0, err
    assert rest == b"", f"stdout carries only the protocol; also got {rest!r}"
    assert "cannot write telemetry on exit" in err  # the exit flush was tried (no store writer here)
    assert err.count("event not recorded (listener stopping)") == 3
    assert "monitor stopped" in err


def test_entry_point_stops_when_supervisord_closes_stdin(tmp_path: Path, run_dir: Path) -> None:
    proc = _start(tmp_path, run_dir)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        assert read_exactly(proc.stdout.fileno(), len(READY)) == READY
        proc.stdin.close()
        code = proc.wait(HANG_GUARD_S)
    finally:
        proc.kill()
        proc.wait()
    err = proc.stderr.read().decode()
    assert code == 0, err
    assert "event stream closed after 0 events" in err and "monitor stopped" in err


def test_protocol_stdout_sends_stray_prints_to_stderr() -> None:
    code = (
        "from fieldbox.monitor.events import protocol_stdout\n"
        "channel = protocol_stdout()\n"
        "print('stray')\n"
        "import os; os.write(1, b'raw fd 1\\n')\n"
        "channel.write('READY\\n'); channel.flush()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
    assert proc.stdout == b"READY\n"
    assert b"stray" in proc.stderr and b"raw fd 1" in proc.stderr
