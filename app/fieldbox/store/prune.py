"""Pruning synced results: the store's half of the /data budget (:mod:`fieldbox.budget`).

A result is stored twice while it waits for the server: in ``results`` (what
``fieldbox store results`` reads) and as its outbox record. Once the outbox
record is gone (the server acknowledged it, or the outbox rule evicted it and
counted that), the ``results`` row is the device's only copy and is needed
only for local reading. Those rows are kept ``keep_synced_s`` and at most
``max_synced_rows``, newest kept. A result still in the outbox is never
pruned here: unsynced results leave only by the outbox rule.

Every prune is counted in the same transaction as the delete: one
``telemetry`` row (metric ``store.pruned``, tags ``{"reason"}``) per reason
and one ``store.pruned`` event with the totals, like ``sync.evicted``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fieldbox.budget import ResultsBudget
from fieldbox.store.store import RESULTS_TOPIC

if TYPE_CHECKING:
    from fieldbox.store import Store

PRUNED_EVENT = "store.pruned"

_SYNCED = (
    "NOT EXISTS (SELECT 1 FROM outbox o WHERE o.record_id = '" + RESULTS_TOPIC + "/' || results.key)"
)
"""SQL: this ``results`` row has no outbox record (the unique index on record_id answers it)."""


@dataclass
class PruneReport:
    """Results pruned by one pass, by reason (``age``, ``rows``)."""

    pruned: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows pruned."""
        return sum(self.pruned.values())


def prune_synced(store: Store, budget: ResultsBudget, now: float | None = None) -> PruneReport:
    """Apply the rule of the module docstring in one transaction; report what went."""
    now = time.time() if now is None else now
    report = PruneReport()
    with store.transaction("pruning synced results") as conn:
        cutoff = now - budget.keep_synced_s
        cur = conn.execute(f"DELETE FROM results WHERE created_at < ? AND {_SYNCED}", (cutoff,))
        if cur.rowcount > 0:
            report.pruned["age"] = cur.rowcount
        (synced,) = conn.execute(f"SELECT count(*) FROM results WHERE {_SYNCED}").fetchone()
        excess = int(synced) - budget.max_synced_rows
        if excess > 0:
            cur = conn.execute(
                f"DELETE FROM results WHERE id IN (SELECT id FROM results WHERE {_SYNCED} "
                "ORDER BY created_at, id LIMIT ?)",
                (excess,),
            )
            report.pruned["rows"] = cur.rowcount
        if report.total:
            conn.executemany(
                "INSERT INTO telemetry (ts, metric, value, tags, resolution) VALUES (?, ?, ?, ?, 0)",
                [
                    (now, PRUNED_EVENT, float(n), json.dumps({"reason": reason}))
                    for reason, n in sorted(report.pruned.items())
                ],
            )
            detail = {"results": report.total, "by_reason": dict(sorted(report.pruned.items()))}
            conn.execute(
                "INSERT INTO events (ts, kind, detail) VALUES (?, ?, ?)",
                (now, PRUNED_EVENT, json.dumps(detail, sort_keys=True)),
            )
    return report
