"""The one client of each service's requests (the servers are in the sibling modules).

Requests (``op`` and fields in the :mod:`fieldbox.ipc` header, bytes in the payload):

runner.sock
    ``ping`` -> ``agents`` (loaded names), ``broken`` (name -> error)
    ``run`` ``agent``; payload = item bytes -> payload = the result as JSON
    ``stats`` -> ``agents``: name -> latency/throughput/memory stats
    ``selftest`` -> ``agents``: name -> "ok" or why its self-test failed; ``broken`` as for ping
store.sock
    ``put``; payload = JSON list of results -> ``stored``: one flag per result
    (False: that key was already stored). Acknowledged after COMMIT (fsynced).
    ``event`` ``kind`` ``detail`` -> ``id`` (acknowledged after COMMIT)
    ``telemetry``; payload = a :class:`~fieldbox.monitor.telemetry.TelemetryBatch`
    as JSON -> ``written`` (points inserted); one transaction, acknowledged
    after COMMIT
    ``count`` ``workflow`` -> ``count``
    ``ping`` -> ``path``
workflows.sock
    ``submit`` ``workflow`` ``name``; payload = item bytes -> ``results`` ...
    (``busy`` error when the workflow's queue is full: retry later)
    ``status`` -> ``workflows``: name -> counters; ``errors``
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldbox import ipc
from fieldbox.errors import ProtocolError
from fieldbox.services import RUNNER_SOCKET, STORE_SOCKET, WORKFLOWS_SOCKET, socket_path

if TYPE_CHECKING:  # only the monitor, which builds batches, needs the telemetry module loaded
    from fieldbox.monitor.telemetry import TelemetryBatch


def _json_payload(frame: ipc.Frame, what: str) -> Any:
    try:
        return json.loads(frame.payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what}: reply payload is not JSON: {exc}") from None


class RunnerClient:
    """Inference through the runner service."""

    def __init__(self, path: Path | None = None, timeout: float = 60.0) -> None:
        self.ipc = ipc.Client(path or socket_path(RUNNER_SOCKET), timeout=timeout, name="runner")

    def run(self, agent: str, data: bytes) -> tuple[dict[str, Any], bytes]:
        """One inference: the result and its JSON bytes (the next step's input)."""
        frame = self.ipc.call("run", data, agent=agent)
        result = _json_payload(frame, f"runner: agent {agent}")
        if not isinstance(result, dict):
            raise ProtocolError(f"runner: agent {agent}: result is not a JSON object")
        return result, frame.payload

    def ping(self) -> dict[str, Any]:
        """Loaded agent names and the manifests that failed to load."""
        return self.ipc.call("ping").header

    def selftest(self) -> dict[str, Any]:
        """Each loaded agent's self-test (its manifest's sample and expectations): name -> "ok" or
        the failure, and ``broken`` (agents that did not load)."""
        return self.ipc.call("selftest").header

    def stats(self) -> dict[str, Any]:
        """Per-agent statistics."""
        stats: dict[str, Any] = self.ipc.call("stats").header.get("agents", {})
        return stats

    def close(self) -> None:
        """Close the connection."""
        self.ipc.close()


class StoreClient:
    """Writes through the store writer service."""

    def __init__(self, path: Path | None = None, timeout: float = 60.0) -> None:
        self.ipc = ipc.Client(path or socket_path(STORE_SOCKET), timeout=timeout, name="store")

    def put_results(self, rows: Sequence[dict[str, Any]]) -> list[bool]:
        """Commit results (key, workflow, agent, item, result, priority) in one transaction.

        Returns one flag per row: True if stored now, False if the key was
        already stored. Returns only after the commit is durable.
        """
        payload = json.dumps(list(rows), separators=(",", ":"), allow_nan=False).encode()
        flags = self.ipc.call("put", payload).header.get("stored")
        if not isinstance(flags, list) or len(flags) != len(rows):
            raise ProtocolError("store: 'put' reply does not have one flag per result")
        return [bool(f) for f in flags]

    def add_event(self, kind: str, detail: dict[str, Any]) -> int:
        """Record an event (e.g. a failed item) in the store's event log."""
        return int(self.ipc.call("event", kind=kind, detail=detail).header.get("id", 0))

    def write_telemetry(self, batch: TelemetryBatch) -> int:
        """Commit one telemetry flush (a :class:`~fieldbox.monitor.telemetry.TelemetrySink`).

        Returns only after the store writer committed it; raises otherwise
        (the caller keeps the samples for the next flush).
        """
        return int(self.ipc.call("telemetry", batch.to_json()).header.get("written", 0))

    def count(self, workflow: str | None = None) -> int:
        """How many results are stored (for ``workflow``, or all)."""
        fields: dict[str, Any] = {} if workflow is None else {"workflow": workflow}
        return int(self.ipc.call("count", **fields).header["count"])

    def config_values(self, prefix: str) -> dict[str, Any]:
        """Config-document values of the keys starting with ``prefix`` (:mod:`fieldbox.settings`)."""
        from fieldbox.sync.access import config_values_reply

        return config_values_reply(self.ipc.call("config.values", prefix=prefix).header)

    def ping(self) -> dict[str, Any]:
        """The store's path (and that the writer is up)."""
        return self.ipc.call("ping").header

    def close(self) -> None:
        """Close the connection."""
        self.ipc.close()


class WorkflowsClient:
    """Submissions and status through the workflows service."""

    def __init__(self, path: Path | None = None, timeout: float = 300.0) -> None:
        self.ipc = ipc.Client(path or socket_path(WORKFLOWS_SOCKET), timeout=timeout, name="workflows")

    def submit(self, workflow: str, name: str, data: bytes) -> dict[str, Any]:
        """Run one item through ``workflow`` and wait for its outcome.

        Raises BusyError when the workflow's queue is full (nothing was taken)
        and InputError/ModelError when the item failed.
        """
        return self.ipc.call("submit", data, workflow=workflow, name=name).header

    def status(self) -> dict[str, Any]:
        """Counters of every workflow, and the connection state of runner and store."""
        return self.ipc.call("status").header

    def close(self) -> None:
        """Close the connection."""
        self.ipc.close()
