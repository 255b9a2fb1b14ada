"""The ``workflows`` program: runs every workflow in ``$FIELDBOX_ETC/workflows``.

For each workflow: an engine (bounded queue + workers, see
:mod:`fieldbox.workflows.engine`) and its triggers (inbox watcher, interval
ticker); socket submissions and status requests arrive on
``$FIELDBOX_RUN/workflows/workflows.sock``. Steps go to the runner, results to the store
writer, each over its socket; either may be down or restarting (supervisord
starts them in order, but does not wait), which only delays items: workers
retry with capped backoff, and inbox files stay put meanwhile.

A workflow file that does not validate is reported (log and ``status``) and
skipped; the others run.

Requests: see :mod:`fieldbox.services.clients`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from fieldbox import ipc, paths
from fieldbox.budget import DataBudget, SpaceGuard, load_budget
from fieldbox.errors import ConfigError, FieldboxError, InputError, ProtocolError
from fieldbox.limits import Limits, for_memory, load_limits, memory_bytes
from fieldbox.services import RUNNER_SOCKET, STORE_SOCKET, WORKFLOWS_SOCKET, socket_path
from fieldbox.services.clients import RunnerClient, StoreClient
from fieldbox.services.common import EXIT_OK, run_service
from fieldbox.workflows.engine import WorkflowEngine
from fieldbox.workflows.spec import WorkflowSpec, load_workflows
from fieldbox.workflows.triggers import InboxWatcher, IntervalTicker, submit_and_wait

SUBMIT_TIMEOUT = 600.0
"""How long a socket submission waits for its outcome."""

PAUSED_EVENT = "workflow.paused"
RESUMED_EVENT = "workflow.resumed"
PRUNED_EVENT = "workflow.pruned"

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[^/\x00]{1,255}$")


class WorkflowsService:
    """Every workflow's engine and triggers, and the socket handler."""

    def __init__(
        self,
        specs: dict[str, WorkflowSpec],
        data_dir: Path,
        stop: threading.Event,
        errors: dict[str, str] | None = None,
        runner_path: Path | None = None,
        store_path: Path | None = None,
        budget: DataBudget | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.limits = limits or for_memory(memory_bytes(), os.cpu_count() or 1)
        self.budget = budget or DataBudget()
        self.space = SpaceGuard(data_dir, self.budget, on_change=self._space_changed)
        self.stop = stop
        self.errors = errors or {}
        self.runner_path = runner_path or socket_path(RUNNER_SOCKET)
        self.store_path = store_path or socket_path(STORE_SOCKET)
        self.engines = {
            name: WorkflowEngine(
                spec,
                runner_factory=lambda: RunnerClient(self.runner_path),
                store_factory=lambda: StoreClient(self.store_path),
                stop=stop,
                space=self.space,
                max_item_bytes=self.limits.max_item_bytes,
            )
            for name, spec in specs.items()
        }
        self.triggers: list[InboxWatcher | IntervalTicker] = []

    def start(self) -> None:
        """Start every engine's workers and triggers."""
        for engine in self.engines.values():
            engine.start()
            if engine.spec.trigger.inbox is not None:
                self.triggers.append(InboxWatcher(engine, self.data_dir, self.budget, self._pruned))
            if engine.spec.trigger.interval is not None:
                self.triggers.append(IntervalTicker(engine, self.data_dir))
        for trigger in self.triggers:
            trigger.start()

    def _event(self, kind: str, detail: dict[str, Any]) -> None:
        """Record an event if the store takes it within a few seconds (a full disk may refuse it)."""
        client = StoreClient(self.store_path, timeout=5.0)
        try:
            client.add_event(kind, detail)
        except FieldboxError as exc:
            log.warning("event %s not recorded: %s", kind, exc)
        finally:
            client.close()

    def _space_changed(self, paused: bool, reason: str) -> None:
        if paused:
            log.warning("workflows paused: %s", reason)
            self._event(PAUSED_EVENT, {"reason": reason})
        else:
            log.warning("workflows resumed: %s", reason)
            self._event(RESUMED_EVENT, {"reason": reason})

    def _pruned(self, directory: str, files: int, size: int) -> None:
        self._event(PRUNED_EVENT, {"dir": directory, "files": files, "bytes": size})

    def join(self, timeout: float = 10.0) -> None:
        """After ``stop``: wait for triggers and workers to finish what they hold."""
        for trigger in self.triggers:
            trigger.join(timeout)
        for engine in self.engines.values():
            engine.join(timeout)

    def handle(self, request: ipc.Request) -> ipc.Reply:
        """Answer one request on workflows.sock."""
        if request.op == "submit":
            name = request.get("workflow", str)
            engine = self.engines.get(name)
            if engine is None:
                known = ", ".join(sorted(self.engines)) or "none"
                raise ConfigError(f"no workflow named {name!r} is running (running: {known})")
            item_name = request.get("name", str, "submitted")
            if not _SAFE_NAME.match(item_name):
                raise ProtocolError("submit: 'name' must be 1-255 characters without '/' or NUL")
            if not request.payload:
                raise ProtocolError("submit: the item is empty")
            outcome = submit_and_wait(engine, item_name, request.payload, SUBMIT_TIMEOUT)
            if not outcome.ok:
                raise InputError(f"{item_name}: {outcome.reason}")
            return ipc.Reply(
                {
                    "workflow": name,
                    "item": item_name,
                    "results": outcome.results,
                    "stored": outcome.stored,
                    "duplicate": outcome.duplicate,
                    "ms": round(outcome.seconds * 1000, 3),
                }
            )
        if request.op == "status":
            return ipc.Reply(self.status())
        if request.op == "ping":
            return ipc.Reply({"workflows": sorted(self.engines)})
        raise ProtocolError(f"workflows: unknown request {request.op!r}", "known: submit, status, ping")

    def status(self) -> dict[str, Any]:
        """Every workflow's counters, the files that did not load, and the services' reachability."""
        services: dict[str, str] = {}
        for name, path, client_cls in (
            ("runner", self.runner_path, RunnerClient),
            ("store", self.store_path, StoreClient),
        ):
            client = client_cls(path, timeout=2.0)
            try:
                client.ping()
                services[name] = "up"
            except FieldboxError as exc:
                services[name] = f"down: {exc.message}"
            finally:
                client.close()
        return {
            "workflows": {name: engine.status() for name, engine in self.engines.items()},
            "errors": self.errors,
            "services": services,
        }


def main_body(log: logging.Logger, stop: threading.Event) -> int:
    """Load the workflows, run them until stopped."""
    errors: dict[str, str] = {}
    specs = load_workflows(paths.etc_dir() / "workflows", errors)
    for file, error in errors.items():
        log.error("workflow file %s NOT loaded: %s", file, error)
    limits = load_limits()
    log.info("input limits: %d bytes per item", limits.max_item_bytes)
    service = WorkflowsService(specs, paths.data_dir(), stop, errors, budget=load_budget(), limits=limits)
    service.start()
    server = ipc.Server(socket_path(WORKFLOWS_SOCKET), service.handle, name="workflows")
    server.start()
    log.info("workflows running: %s; serving %s", ", ".join(sorted(specs)) or "none", server.path)
    stop.wait()
    log.info("workflows stopping: finishing the items in hand")
    server.shutdown(wait=2.0)
    service.join()
    return EXIT_OK


def main() -> int:
    """Entry point: ``python3 -m fieldbox.services.workflows``."""
    return run_service("workflows", main_body)


if __name__ == "__main__":
    sys.exit(main())
