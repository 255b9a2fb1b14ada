"""The store, sync and monitor programs from rootfs-overlay under a real supervisord on the host.

``monitor`` is one process that samples resources AND is supervisord's event
listener; it writes both through the store writer's socket (it does not open
the database).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
import requests
from supervisor.xmlrpc import SupervisorTransport
from sync_support import open_store, put_results, running_server

from fieldbox_host.devstack import service_users_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONF_D = ROOT / "rootfs-overlay" / "etc" / "supervisor" / "conf.d"


def _supervisord() -> str:
    found = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or shutil.which("supervisord")
    assert found, "supervisord is not installed (it is in requirements.lock)"
    return found


def _processes(run: Path) -> dict[str, dict[str, Any]]:
    """supervisord's view of every process, by name (empty while it is not answering yet)."""
    transport = SupervisorTransport(None, None, f"unix://{run}/supervisor.sock")
    proxy: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    try:
        info = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Fault):
        return {}
    return {p["name"]: p for p in info}


def _running_pid(run: Path, name: str, deadline: float) -> int:
    while time.monotonic() < deadline:
        info = _processes(run).get(name)
        if info is not None and info["statename"] == "RUNNING":
            return int(info["pid"])
        time.sleep(0.2)
    raise AssertionError(f"{name} not RUNNING: {_processes(run).get(name)}")


def _supervisord_conf(tmp_path: Path, data: Path, run: Path, *extra: Path) -> Path:
    """supervisord running the image's store, sync and monitor programs (and ``extra`` files)."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\nnodaemon = true\n"
        f"logfile = {data}/log/supervisord.log\npidfile = {run}/supervisord.pid\n"
        f"[unix_http_server]\nfile = {run}/supervisor.sock\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[include]\nfiles = {CONF_D}/store.conf {CONF_D}/sync.conf {CONF_D}/monitor.conf "
        + " ".join(str(p) for p in extra) + "\n"
    )
    return conf


def _env(data: Path, etc: Path, run: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FIELDBOX_DATA": str(data),
        "FIELDBOX_ETC": str(etc),
        "FIELDBOX_RUN": str(run),
        "FIELDBOX_PYTHON": sys.executable,
        **service_users_env(),
    }


def test_programs_run_and_process_events_are_recorded(tmp_path: Path) -> None:
    data, etc, run = tmp_path / "data", tmp_path / "etc", tmp_path / "run"
    for d in (data / "log", etc, run):
        d.mkdir(parents=True)
    store = open_store(data)
    put_results(store, 300, priorities=[2, 6])
    store.close()
    (etc / "monitor.toml").write_text("interval_s = 0.5\nflush_s = 1.0\n")
    (tmp_path / "crash.conf").write_text(
        "[program:crasher]\n"
        f"command = {sys.executable} -c \"import time; time.sleep(1.5); raise SystemExit(3)\"\n"
        "startsecs = 1\nautorestart = false\nstartretries = 0\n"
        "[program:never]\n"
        f"command = {sys.executable} -c \"raise SystemExit(1)\"\n"
        "startsecs = 1\nstartretries = 1\nautorestart = true\n"
    )
    conf = _supervisord_conf(tmp_path, data, run, tmp_path / "crash.conf")
    with running_server(tmp_path / "server.sqlite") as server:
        (etc / "sync.toml").write_text(
            f'server_url = "{server.url}"\ndevice_id = "dev-sv"\nidle_s = 0.2\n'
        )
        proc = subprocess.Popen([_supervisord(), "-c", str(conf)], env=_env(data, etc, run))
        try:
            deadline = time.monotonic() + 60
            monitor_pid = _running_pid(run, "monitor", deadline)
            sync_pid = _running_pid(run, "sync", deadline)
            names = set(_processes(run))
            os.kill(sync_pid, signal.SIGKILL)  # an unexpected exit of another program
            kinds: set[str] = set()
            killed: list[dict[str, Any]] = []
            own_rss = 0
            telemetry_arrived = False
            while time.monotonic() < deadline:
                time.sleep(0.5)
                store = open_store(data)
                try:
                    exits = store.events("process.exited")
                    kinds = {e.kind for e in store.events(limit=100)}
                    tele = store.query("SELECT count(*) FROM telemetry WHERE metric = 'cpu.percent'")[0][0]
                    own_rss = store.query(
                        "SELECT count(*) FROM telemetry WHERE metric = 'proc.rss_b' AND tags = ?",
                        ['{"program":"monitor"}'],
                    )[0][0]
                finally:
                    store.close()
                killed = [e.detail for e in exits if e.detail and e.detail.get("pid") == sync_pid]
                topics = {d.device: d.by_topic for d in server.db.devices()}.get("dev-sv", {})
                telemetry_arrived = topics.get("telemetry", 0) > 0
                if (
                    {"process.exited", "process.fatal"} <= kinds
                    and killed
                    and tele > 0
                    and own_rss > 0
                    and topics.get("results") == 300
                    and telemetry_arrived
                ):
                    break
            still = _processes(run)["monitor"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        rows = server.db.records()
    # one merged program: the listener and the sampler are the same process, never restarted
    assert "monitor" in names and "events" not in names, names
    assert still["statename"] == "RUNNING" and still["pid"] == monitor_pid, still
    assert killed == [
        {"program": "sync", "group": "sync", "from_state": "RUNNING", "pid": sync_pid, "expected": False}
    ], killed
    assert own_rss > 0  # the sampler sees its own process under the program name "monitor"
    log = (data / "log" / "monitor.log").read_text()
    assert "monitor stopped" in log and "Traceback" not in log, log[-2000:]
    assert {"process.exited", "process.backoff", "process.fatal"} <= kinds, kinds
    results = [r for r in rows if r[3] == "results"]
    assert len(results) == 300 and len({r[2] for r in results}) == 300
    assert [r[4] for r in results] == sorted(r[4] for r in results)
    assert tele > 0 and telemetry_arrived
    store = open_store(data)
    try:
        (crash,) = [e for e in store.events("process.exited") if e.detail["program"] == "crasher"]
        assert crash.detail["expected"] is False and crash.detail["from_state"] == "RUNNING"
    finally:
        store.close()


def _samples(data: Path) -> int:
    store = open_store(data)
    try:
        return int(store.query("SELECT count(*) FROM telemetry WHERE metric = 'cpu.percent'")[0][0])
    finally:
        store.close()


def _wait_log(path: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{path.name} never said {needle!r}; it ends:\n{path.read_text()[-2000:]}")


def test_keys_set_on_the_server_change_what_the_running_device_does(tmp_path: Path) -> None:
    data, etc, run = tmp_path / "data", tmp_path / "etc", tmp_path / "run"
    for d in (data / "log", etc, run):
        d.mkdir(parents=True)
    open_store(data).close()
    (etc / "monitor.toml").write_text("interval_s = 30.0\nflush_s = 1.0\n")
    conf = _supervisord_conf(tmp_path, data, run)
    with running_server(tmp_path / "server.sqlite") as server:
        (etc / "sync.toml").write_text(
            f'server_url = "{server.url}"\ndevice_id = "dev-cfg"\nidle_s = 0.2\nconfig_interval_s = 1.0\n'
        )
        proc = subprocess.Popen([_supervisord(), "-c", str(conf)], env=_env(data, etc, run))
        try:
            deadline = time.monotonic() + 60
            _running_pid(run, "monitor", deadline)
            _running_pid(run, "sync", deadline)
            time.sleep(3)
            before = _samples(data)
            time.sleep(4)
            slow = _samples(data) - before  # one sample per 30 s: at most one in 4 s
            edit = {"set": {"monitor.interval_s": 1.0, "sync.idle_s": "fast"}, "delete": []}
            r = requests.put(f"{server.url}/v1/devices/dev-cfg/config", json=edit, timeout=5)
            assert r.status_code == 200, r.text
            _wait_log(data / "log" / "monitor.log", "setting monitor.interval_s = 1 (was 30)", 30)
            _wait_log(data / "log" / "sync.log", "sync.idle_s = 'fast': expected a number of seconds", 30)
            time.sleep(1.5)  # past the flush in which the new interval was read
            before = _samples(data)
            time.sleep(5)
            fast = _samples(data) - before  # one a second now
            r = requests.put(f"{server.url}/v1/devices/dev-cfg/config",
                             json={"set": {}, "delete": ["monitor.interval_s"]}, timeout=5)  # fmt: skip
            assert r.status_code == 200, r.text
            _wait_log(data / "log" / "monitor.log", "setting monitor.interval_s = 30 (was 1)", 30)
            states = {name: p["statename"] for name, p in _processes(run).items()}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    assert slow <= 1 and fast >= 3, (slow, fast)
    assert states == {"store": "RUNNING", "sync": "RUNNING", "monitor": "RUNNING"}, states
