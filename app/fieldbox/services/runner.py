"""The ``runner`` program: loads every agent, serves inference on ``$FIELDBOX_RUN/runner/runner.sock``.

Every manifest in ``$FIELDBOX_ETC/agents`` is loaded (sha256-checked, warmed
up). One that fails to load does not stop the others: requests for it are
answered ``agent-unavailable`` with its load error (e.g. "model sha256
mismatch"), which the workflows treat as transient: the item is held and
retried, not failed, because the input is fine and the model is what is
broken. The runner tries the manifest again when a request comes at least
:data:`RELOAD_S` after the last try, so a fixed model (an app update, a
corrected file) is picked up without a restart. Requests run in the
connection's thread; an agent serialises only its own interpreter call, so
two workflow workers overlap decoding with inference, up to the decode slots
of :mod:`fieldbox.limits` (memory: a decoded photo is the largest buffer).

Requests: see :mod:`fieldbox.services.clients`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fieldbox import ipc, paths
from fieldbox.agents import Agent, load_agent, load_agents
from fieldbox.agents.image import set_pixel_cap
from fieldbox.errors import AgentUnavailableError, FieldboxError, ProtocolError
from fieldbox.limits import Limits, load_limits
from fieldbox.services import RUNNER_SOCKET, socket_path
from fieldbox.services.common import EXIT_OK, run_service

RELOAD_S = 30.0
"""How often a broken or missing agent's manifest is tried again (on demand, by a request for it)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class RunnerService:
    """The request handler over a set of loaded agents."""

    def __init__(
        self,
        agents: dict[str, Agent],
        broken: dict[str, FieldboxError],
        decode_slots: int = 0,
        directory: Path | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.agents = agents
        self.broken = broken
        self.directory = directory
        self.log = log or logging.getLogger(__name__)
        self._tried: dict[str, float] = {name: time.monotonic() for name in broken}
        self._reload_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(decode_slots) if decode_slots > 0 else None

    @classmethod
    def load(cls, directory: Path, log: logging.Logger, limits: Limits | None = None) -> RunnerService:
        """Load every agent manifest in ``directory``; broken ones are kept with their error.

        ``limits`` (:mod:`fieldbox.limits`): the decoded-pixel cap and the decode slots.
        """
        if limits is not None:
            set_pixel_cap(limits.max_decoded_pixels)
        errors: dict[Path, FieldboxError] = {}
        agents = load_agents(directory, errors=errors)
        broken = {path.stem: exc for path, exc in errors.items()}
        for name, agent in agents.items():
            log.info("agent %s loaded (%s, %s)", name, agent.kind, agent.model_path.name)
        for name, exc in broken.items():
            log.error("agent %s NOT loaded: %s", name, exc)
        return cls(agents, broken, limits.decode_slots if limits is not None else 0, directory, log)

    def handle(self, request: ipc.Request) -> ipc.Reply:
        """Answer one request."""
        if request.op == "run":
            name = request.get("agent", str)
            agent = self.agents.get(name) or self._reload(name)
            if agent is None:
                raise self._missing(name)
            if self._slots is None:
                result = agent.run(request.payload)
            else:
                with self._slots:  # memory: at most decode_slots inputs decoded at once
                    result = agent.run(request.payload)
            return ipc.Reply({"agent": name}, json.dumps(result, separators=(",", ":")).encode())
        if request.op == "ping":
            return ipc.Reply(
                {
                    "agents": sorted(self.agents),
                    "broken": {name: str(exc) for name, exc in self.broken.items()},
                }
            )
        if request.op == "stats":
            stats: dict[str, Any] = {name: agent.stats() for name, agent in self.agents.items()}
            return ipc.Reply({"agents": stats})
        if request.op == "selftest":
            broken = {name: str(exc) for name, exc in self.broken.items()}
            return ipc.Reply({"agents": self.selftest(), "broken": broken})
        raise ProtocolError(f"runner: unknown request {request.op!r}", "known: run, ping, stats, selftest")

    def selftest(self) -> dict[str, str]:
        """Run every loaded agent's self-test: name -> "ok" or the one-line failure."""
        out: dict[str, str] = {}
        for name, agent in sorted(self.agents.items()):
            try:
                agent.self_test()
                out[name] = "ok"
            except FieldboxError as exc:
                out[name] = str(exc)
        return out

    def _reload(self, name: str) -> Agent | None:
        """Try a broken (or not yet known) agent's manifest again, at most every RELOAD_S."""
        if self.directory is None or not _NAME.fullmatch(name):
            return None
        manifest = self.directory / f"{name}.toml"
        with self._reload_lock:
            if name in self.agents:
                return self.agents[name]
            if time.monotonic() - self._tried.get(name, -RELOAD_S) < RELOAD_S or not manifest.is_file():
                return None
            self._tried[name] = time.monotonic()
            try:
                agent = load_agent(manifest)
            except FieldboxError as exc:
                self.broken[name] = exc
                self.log.error("agent %s still NOT loaded: %s", name, exc)
                return None
            self.agents[name] = agent
            self.broken.pop(name, None)
            self.log.info("agent %s loaded on retry (%s, %s)", name, agent.kind, agent.model_path.name)
            return agent

    def _missing(self, name: str) -> FieldboxError:
        exc = self.broken.get(name)
        if exc is not None:
            return AgentUnavailableError(
                f"agent {name} is not available: {exc}", f"items wait; fix {name}.toml or its model"
            )
        known = ", ".join(sorted(self.agents)) or "none"
        return AgentUnavailableError(
            f"no agent named {name!r} is loaded (loaded: {known})", "items wait until it is installed"
        )


def main_body(log: logging.Logger, stop: threading.Event) -> int:
    """Load the agents, serve until stopped."""
    limits = load_limits()
    log.info("input limits: %d decoded pixels, %d decode slots",
             limits.max_decoded_pixels, limits.decode_slots)  # fmt: skip
    service = RunnerService.load(paths.etc_dir() / "agents", log, limits)
    server = ipc.Server(socket_path(RUNNER_SOCKET), service.handle, name="runner")
    server.start()
    log.info("runner serving %d agent(s) on %s", len(service.agents), server.path)
    stop.wait()
    server.shutdown()
    return EXIT_OK


def main() -> int:
    """Entry point: ``python3 -m fieldbox.services.runner``."""
    return run_service("runner", main_body)


if __name__ == "__main__":
    sys.exit(main())
