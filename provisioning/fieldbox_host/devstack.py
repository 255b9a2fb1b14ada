"""The device's supervisord, run on the host: ``fieldbox dev up``, integration tests, the bench.

:class:`DevStack` starts the REAL supervisord (the one in the venv) with the
very files the image carries, ``rootfs-overlay/etc/supervisor/supervisord.conf``
and its ``conf.d/*.conf``, over host directories::

    FIELDBOX_DATA    a temporary (or given) directory: store, keys, inbox, logs
    FIELDBOX_ETC     rootfs-overlay/etc/fieldbox of this checkout
    FIELDBOX_RUN     a temporary directory: sockets, supervisord's pid file
    FIELDBOX_MODELS  build/assets:build/models of this checkout
    FIELDBOX_PYTHON  this Python (the venv's), which has fieldbox installed

and FIELDBOX_<PROGRAM>_USER all naming the user who runs it (on the device each
program has its own account). Nothing about the programs differs from the device but
those variables.
``stop`` shuts supervisord down (it stops the programs first); if that does
not finish in time every process is killed, so a failing test never leaves
services behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from fieldbox.errors import ConfigError, ServiceUnavailableError

PROGRAMS = ("store", "runner", "workflows")
"""The supervisord programs of conf.d, in start order."""

SERVICE_USER_VARIABLES = (
    "FIELDBOX_STORE_USER",
    "FIELDBOX_RUNNER_USER",
    "FIELDBOX_WORKFLOWS_USER",
    "FIELDBOX_SYNC_USER",
    "FIELDBOX_MONITOR_USER",
)
"""The user each program runs as (``user =`` in its conf.d file); the device's init sets them."""


def service_users_env() -> dict[str, str]:
    """Every program as the user running supervisord: on a host the stack needs no accounts of its own."""
    me = pwd.getpwuid(os.getuid()).pw_name
    return dict.fromkeys(SERVICE_USER_VARIABLES, me)


def repo_root() -> Path:
    """The source checkout this host package lives in (``fieldbox dev up`` needs one)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "rootfs-overlay" / "etc" / "supervisor" / "supervisord.conf").is_file():
        raise ConfigError(
            f"{root}: not a fieldbox source checkout (no rootfs-overlay/etc/supervisor)",
            "run from a clone of the repository with an editable install (make venv)",
        )
    return root


class DevStack:
    """supervisord + the device programs over host directories."""

    def __init__(
        self,
        data: Path | None = None,
        run: Path | None = None,
        etc: Path | None = None,
        models: Iterable[Path] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        root = repo_root()
        self.root = root
        self.conf = root / "rootfs-overlay" / "etc" / "supervisor" / "supervisord.conf"
        self._own_data = data is None
        self._own_run = run is None
        self.data = Path(data) if data is not None else Path(tempfile.mkdtemp(prefix="fieldbox-data-"))
        # Short: a Unix socket path must stay under 108 bytes.
        self.run = Path(run) if run is not None else Path(tempfile.mkdtemp(prefix="fbx-run-"))
        self.etc = Path(etc) if etc is not None else root / "rootfs-overlay" / "etc" / "fieldbox"
        self.models = (
            list(models) if models is not None else [root / "build" / "assets", root / "build" / "models"]
        )
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._child_pids: set[int] = set()

    # ----------------------------------------------------------------- paths
    @property
    def inbox(self) -> Path:
        """The demo workflow's inbox."""
        return self.data / "inbox"

    @property
    def log_dir(self) -> Path:
        """supervisord's and the programs' logs."""
        return self.data / "log"

    @property
    def socket(self) -> Path:
        """supervisord's control socket (for supervisorctl)."""
        return self.run / "supervisor.sock"

    def env(self) -> dict[str, str]:
        """The environment supervisord (and so every program) runs with."""
        env = dict(os.environ)
        env.update(
            FIELDBOX_DATA=str(self.data),
            FIELDBOX_ETC=str(self.etc),
            FIELDBOX_RUN=str(self.run),
            FIELDBOX_MODELS=os.pathsep.join(str(p) for p in self.models),
            FIELDBOX_PYTHON=sys.executable,
            PYTHONUNBUFFERED="1",
        )
        env.update(service_users_env())
        env.update(self.extra_env)
        return env

    def supervisorctl_command(self) -> str:
        """How a user runs supervisorctl against this supervisord."""
        ctl = Path(sys.executable).with_name("supervisorctl")
        return f"FIELDBOX_RUN={self.run} {ctl} -c {self.conf} status"

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0, console: bool = False) -> None:
        """Start supervisord and wait until every program is RUNNING.

        ``console``: supervisord's own log also goes to this terminal
        (``fieldbox dev up``); otherwise to ``log/supervisord.console``.
        """
        if len(os.fsencode(self.socket)) > 100:
            raise ConfigError(f"{self.run}: path too long for Unix sockets", "use a shorter --run dir")
        for directory in (self.data, self.log_dir, self.inbox, self.run):
            directory.mkdir(parents=True, exist_ok=True)
        if self._console is None and not console:
            self._console = open(self.log_dir / "supervisord.console", "ab")  # noqa: SIM115
        out = None if console else self._console
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,  # Ctrl-C reaches us, and we stop supervisord in order
        )
        try:
            self.wait_running(PROGRAMS, timeout)
        except BaseException:
            self.stop()
            raise

    def rpc(self) -> Any:
        """An XML-RPC proxy to supervisord (``supervisor.getAllProcessInfo()``, ...)."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> dict[str, dict[str, Any]]:
        """supervisord's view of every program (statename, pid, ...), by name."""
        info = self.rpc().supervisor.getAllProcessInfo()
        result = {p["name"]: p for p in info}
        self._child_pids.update(p["pid"] for p in info if p.get("pid"))
        return result

    def pid(self, program: str) -> int:
        """The pid of a RUNNING program."""
        info = self.processes()[program]
        if info["statename"] != "RUNNING":
            raise ServiceUnavailableError(f"{program} is {info['statename']}, not RUNNING")
        return int(info["pid"])

    def wait_running(
        self, programs: Iterable[str] = PROGRAMS, timeout: float = 60.0, not_pids: Iterable[int] = ()
    ) -> dict[str, int]:
        """Wait until every program is RUNNING (with a pid not in ``not_pids``); their pids."""
        wanted = list(programs)
        excluded = set(not_pids)
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceUnavailableError(
                    f"supervisord exited with {self.proc.returncode}",
                    f"see {self.log_dir / 'supervisord.log'}",
                )
            try:
                last = self.processes()
            except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
                time.sleep(0.1)
                continue
            states = {name: last.get(name, {}).get("statename") for name in wanted}
            if all(s == "RUNNING" for s in states.values()) and not any(
                last[name]["pid"] in excluded for name in wanted
            ):
                return {name: int(last[name]["pid"]) for name in wanted}
            fatal = [name for name, s in states.items() if s in ("FATAL", "BACKOFF")]
            if fatal and any(last[name]["statename"] == "FATAL" for name in fatal):
                break
            time.sleep(0.1)
        states = {name: last.get(name, {}).get("statename", "unknown") for name in wanted}
        raise ServiceUnavailableError(
            f"programs not RUNNING after {timeout:g} s: {states}",
            f"see the logs in {self.log_dir}",
        )

    def stop(self, timeout: float = 40.0) -> None:
        """Stop supervisord (which stops the programs); kill everything if that hangs."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                self.processes()  # remember the children's pids, to be sure they are gone after
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        for pid in self._child_pids:
            if _is_our_program(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._child_pids.clear()
        if self._console is not None:
            self._console.close()
            self._console = None

    def cleanup(self) -> None:
        """Remove the directories this stack created itself (after :meth:`stop`)."""
        if self._own_run:
            shutil.rmtree(self.run, ignore_errors=True)
        if self._own_data:
            shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _is_our_program(pid: int) -> bool:
    """Whether ``pid`` is still one of the fieldbox service processes (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"fieldbox.services." in cmdline
