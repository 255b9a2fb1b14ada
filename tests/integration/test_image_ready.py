"""The image's "fieldbox ready" helper against a real supervisord on the host."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY = ROOT / "rootfs-overlay/usr/sbin/fieldbox-ready"


def _conf(tmp: Path, program: str) -> Path:
    conf = tmp / "supervisord.conf"
    conf.write_text(
        f"""[unix_http_server]
file = %(ENV_FIELDBOX_RUN)s/supervisor.sock
[supervisord]
nodaemon = true
logfile = {tmp}/supervisord.log
pidfile = {tmp}/supervisord.pid
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:worker]
command = {program}
startsecs = 1
startretries = 0
autorestart = false
"""
    )
    return conf


def _run(tmp_path: Path, program: str, sockets: str = "") -> str:
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, FIELDBOX_RUN=str(run), FIELDBOX_SLOT="A", FIELDBOX_VERSION="9.9",
               FIELDBOX_READY_SOCKETS=sockets,
               FIELDBOX_SUPERVISORD_CONF=str(_conf(tmp_path, program)),
               FIELDBOX_CONSOLE=str(tmp_path / "console"))  # fmt: skip
    supervisord = Path(sys.executable).parent / "supervisord"
    daemon = subprocess.Popen([str(supervisord), "-n", "-c", env["FIELDBOX_SUPERVISORD_CONF"]], env=env)
    try:
        started = time.monotonic()
        subprocess.run([sys.executable, str(READY)], env=env, timeout=60, check=False)
        assert time.monotonic() - started < 30
        return (tmp_path / "console").read_text()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_ready_line_once_every_program_runs(tmp_path: Path) -> None:
    out = _run(tmp_path, "sleep 60")
    assert out.startswith("fieldbox ready: 1 programs RUNNING, ")
    assert re.search(r"slot A, version 9\.9, \d+ MiB used$", out.rstrip()), out


def test_degraded_line_names_the_fatal_program(tmp_path: Path) -> None:
    out = _run(tmp_path, "false")
    assert out.strip() == "fieldbox degraded: FATAL worker"


def test_ready_waits_until_the_service_sockets_take_connections(tmp_path: Path) -> None:
    """RUNNING after startsecs is not enough: a service still loading has no socket yet."""
    serve_late = (
        f"{sys.executable} -c \"import socket, time; time.sleep(4); s = socket.socket(socket.AF_UNIX); "
        f"s.bind('{tmp_path}/run/svc.sock'); s.listen(); time.sleep(60)\""
    )
    started = time.monotonic()
    out = _run(tmp_path, serve_late, sockets="svc.sock")
    assert out.startswith("fieldbox ready: 1 programs RUNNING, ")
    assert time.monotonic() - started >= 4, "ready came before the socket existed"
