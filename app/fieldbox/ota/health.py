"""The health check that decides whether a trial boot is committed.

Healthy means, all within ``health_timeout_s`` of the check starting:

1. every supervisord program is RUNNING and has been for ``health_stable_s``
   without a restart (a FATAL program fails at once);
2. the store writer answers (the encrypted store opened with this slot's code);
3. the runner loaded every shipped agent, and each agent's self-test (its
   manifest's sample and expected result) passes;
4. init did not report the boot degraded (``$FIELDBOX_RUN/degraded``: e.g. a data
   partition this slot could not mount); that is final too.

Anything that is merely not up yet is retried until the deadline; a failed
self-test, an agent that did not load, or a FATAL program is final. The
result names what failed, for ``ota history`` and the event sent to the server.
"""

from __future__ import annotations

import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fieldbox.errors import FieldboxError, ServiceError
from fieldbox.paths import run_dir

POLL_S = 2.0


@dataclass(frozen=True)
class Health:
    """The verdict and why."""

    ok: bool
    reason: str
    seconds: float


def supervisor_info() -> list[dict[str, Any]]:
    """supervisord's ``getAllProcessInfo`` over its Unix socket."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{run_dir() / 'supervisor.sock'}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    info = proxy.supervisor.getAllProcessInfo()
    return list(info)  # type: ignore[arg-type]


class _Final(Exception):
    """A failure that waiting will not fix."""


def _programs(stable_s: float, seen: dict[str, int]) -> str | None:
    """None when every program is settled; else what is not (raises _Final for FATAL)."""
    try:
        infos = supervisor_info()
    except (OSError, xmlrpc.client.Error) as exc:
        return f"supervisord does not answer: {exc}"
    waiting = []
    for info in infos:
        name, state = info["name"], info["statename"]
        if state == "FATAL":
            raise _Final(f"program {name} is FATAL (it could not be started)")
        restarted = name in seen and seen[name] != info["start"]
        seen[name] = info["start"]
        if state != "RUNNING":
            waiting.append(f"{name} is {state}")
        elif restarted or info["now"] - info["start"] < stable_s:
            waiting.append(f"{name} running for {info['now'] - info['start']} s")
    return "; ".join(waiting) or None


def _services() -> str | None:
    from fieldbox.services.clients import RunnerClient, StoreClient

    try:
        store = StoreClient(timeout=30.0)
        try:
            store.ping()
        finally:
            store.close()
    except ServiceError as exc:
        return f"store writer: {exc}"
    try:
        runner = RunnerClient(timeout=300.0)
        try:
            broken = runner.ping().get("broken", {})
            if broken:
                name, why = sorted(broken.items())[0]
                raise _Final(f"agent {name} did not load: {why}")
            results = runner.selftest().get("agents", {})
        finally:
            runner.close()
    except ServiceError as exc:
        return f"runner: {exc}"
    if not results:
        raise _Final("the runner serves no agents")
    failed = {n: r for n, r in results.items() if r != "ok"}
    if failed:
        name, why = sorted(failed.items())[0]
        raise _Final(f"self-test failed: {why}")
    return None


def _not_degraded() -> None:
    try:
        reason = (run_dir() / "degraded").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return
    raise _Final(f"the boot is degraded: {reason or 'no reason given'}")


def check(
    timeout_s: float,
    stable_s: float,
    log: Callable[[str], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Health:
    """Run the health check; return the verdict within ``timeout_s``."""
    started = clock()
    seen: dict[str, int] = {}
    last = "not checked yet"
    while True:
        try:
            _not_degraded()
            problem = _programs(stable_s, seen)
            if problem is None:
                problem = _services()
            if problem is None:
                return Health(
                    True,
                    "every program RUNNING, store open, every agent's self-test passed",
                    clock() - started,
                )
        except _Final as exc:
            return Health(False, str(exc), clock() - started)
        except FieldboxError as exc:
            problem = str(exc)
        if problem != last:
            log(f"health: waiting: {problem}")
            last = problem
        if clock() - started >= timeout_s:
            return Health(False, f"not healthy within {timeout_s:.0f} s: {last}", clock() - started)
        sleep(POLL_S)
