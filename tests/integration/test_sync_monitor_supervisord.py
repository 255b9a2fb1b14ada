"""The store, sync, monitor and events programs from rootfs-overlay under a real supervisord on the host.

monitor and events write through the store writer's socket (they do not open the database).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sync_support import open_store, put_results, running_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONF_D = ROOT / "rootfs-overlay" / "etc" / "supervisor" / "conf.d"


def _supervisord() -> str:
    found = shutil.which("supervisord", path=str(Path(sys.executable).parent)) or shutil.which("supervisord")
    assert found, "supervisord is not installed (it is in requirements.lock)"
    return found


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
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "[supervisord]\nnodaemon = true\n"
        f"logfile = {data}/log/supervisord.log\npidfile = {run}/supervisord.pid\n"
        f"[unix_http_server]\nfile = {run}/supervisor.sock\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        f"[include]\nfiles = {CONF_D}/store.conf {CONF_D}/sync.conf {CONF_D}/monitor.conf "
        f"{CONF_D}/events.conf {tmp_path}/crash.conf\n"
    )
    with running_server(tmp_path / "server.sqlite") as server:
        (etc / "sync.toml").write_text(
            f'server_url = "{server.url}"\ndevice_id = "dev-sv"\nidle_s = 0.2\n'
        )
        env = {
            **os.environ,
            "FIELDBOX_DATA": str(data),
            "FIELDBOX_ETC": str(etc),
            "FIELDBOX_RUN": str(run),
            "FIELDBOX_PYTHON": sys.executable,
        }
        proc = subprocess.Popen([_supervisord(), "-c", str(conf)], env=env)
        try:
            deadline = time.monotonic() + 60
            kinds: set[str] = set()
            telemetry_arrived = False
            while time.monotonic() < deadline:
                time.sleep(0.5)
                store = open_store(data)
                try:
                    kinds = {e.kind for e in store.events(limit=100)}
                    tele = store.query("SELECT count(*) FROM telemetry WHERE metric = 'cpu.percent'")[0][0]
                finally:
                    store.close()
                topics = {d.device: d.by_topic for d in server.db.devices()}.get("dev-sv", {})
                telemetry_arrived = topics.get("telemetry", 0) > 0
                if (
                    {"process.exited", "process.fatal"} <= kinds
                    and tele > 0
                    and topics.get("results") == 300
                    and telemetry_arrived
                ):
                    break
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        rows = server.db.records()
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
