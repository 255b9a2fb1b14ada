"""A bounded ring buffer of recent latencies, and the figures an agent reports from it.

Recording is one float store and two integer adds, cheap enough to sit on the
timed inference path. Percentiles are computed only when asked, over the most
recent ``capacity`` samples; the count and the total time cover every sample
since the agent was loaded.
"""

from __future__ import annotations

import os
from array import array
from typing import Any

import numpy as np


class LatencyRing:
    """The last ``capacity`` latencies (seconds) plus lifetime count and total."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._buf = array("d", bytes(8 * capacity))
        self._capacity = capacity
        self._next = 0
        self.count = 0
        self.total_s = 0.0

    def record(self, seconds: float) -> None:
        """Add one sample. Writers must be serialised by the caller (the agent's inference lock)."""
        self._buf[self._next] = seconds
        self._next = (self._next + 1) % self._capacity
        self.count += 1
        self.total_s += seconds

    def recent(self) -> list[float]:
        """The retained samples, oldest first (a racing writer can at worst make one sample stale)."""
        end, count = self._next, self.count
        if count < self._capacity:
            return list(self._buf[:end])
        return list(self._buf[end:]) + list(self._buf[:end])

    def summary(self) -> dict[str, Any]:
        """count, mean/p50/p95/p99/max in ms over recent samples, and throughput per second of busy time."""
        samples = np.asarray(self.recent(), dtype=np.float64) * 1000.0
        out: dict[str, Any] = {"count": self.count}
        if samples.size == 0:
            out.update({"mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None})
            out["throughput_per_s"] = None
            return out
        p50, p95, p99 = np.percentile(samples, [50, 95, 99])
        out.update(
            {
                "mean_ms": round(float(samples.mean()), 4),
                "p50_ms": round(float(p50), 4),
                "p95_ms": round(float(p95), 4),
                "p99_ms": round(float(p99), 4),
                "max_ms": round(float(samples.max()), 4),
                # Items per second if the agent ran back to back: 1 / mean latency.
                "throughput_per_s": round(1000.0 / float(samples.mean()), 2) if samples.mean() > 0 else None,
            }
        )
        return out


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux ``/proc/self/statm``), or None where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            resident_pages = int(fh.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process (``VmHWM``), or None where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
