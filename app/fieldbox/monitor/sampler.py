"""One reading of the device's health: psutil figures, thermal zones, the Pi's throttling flags.

Every figure is a ``(metric, value, tags)`` triple. Rates (network and disk
bytes per second, CPU of our programs) need two readings, so a
:class:`Sampler` keeps the previous counters; the first call reports levels
only. ``sys_root`` (default ``/``) lets tests point the sysfs readers at a
directory tree of their own.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

Sample = tuple[str, float, dict[str, str] | None]

THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "arm_freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
"""Bits of the Pi firmware's ``get_throttled`` word."""


def read_thermal(sys_root: Path) -> list[Sample]:
    """``/sys/class/thermal/thermal_zone*/temp`` (milli-degrees C) as ``temp.c`` per zone type."""
    out: list[Sample] = []
    base = sys_root / "sys" / "class" / "thermal"
    for zone in sorted(base.glob("thermal_zone*")):
        try:
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            kind = (zone / "type").read_text().strip() or zone.name
        except OSError:
            kind = zone.name
        out.append(("temp.c", milli / 1000.0, {"zone": kind}))
    return out


def read_throttled(sys_root: Path, run: Callable[[list[str]], str | None] | None = None) -> int | None:
    """The Pi's throttling word from sysfs (newer kernels) or ``vcgencmd get_throttled``; None elsewhere."""
    sysfs = sys_root / "sys" / "devices" / "platform" / "soc" / "soc:firmware" / "get_throttled"
    try:
        return int(sysfs.read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    runner = run if run is not None else _run_vcgencmd
    text = runner(["vcgencmd", "get_throttled"])
    if text and "=" in text:
        try:
            return int(text.split("=", 1)[1].strip(), 16)
        except ValueError:
            return None
    return None


def _run_vcgencmd(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=2, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def throttle_samples(word: int | None) -> list[Sample]:
    """The raw word plus one 0/1 metric per known flag."""
    if word is None:
        return []
    out: list[Sample] = [("pi.throttled_word", float(word), None)]
    out += [(f"pi.{name}", float((word >> bit) & 1), None) for bit, name in THROTTLE_BITS.items()]
    return out


def _program_of(proc: psutil.Process) -> str | None:
    """``fieldbox.services.<name>`` in a command line → the program name."""
    try:
        cmdline = proc.cmdline()
    except (psutil.Error, OSError):
        return None
    for i, arg in enumerate(cmdline):
        if arg == "-m" and i + 1 < len(cmdline):
            module = cmdline[i + 1]
            if module.startswith("fieldbox.services."):
                return str(module).rsplit(".", 1)[1]
    return None


class Sampler:
    """Collects one list of samples per call; keeps counters between calls for rates."""

    def __init__(self, data_dir: Path, sys_root: Path = Path("/")) -> None:
        self.data_dir = data_dir
        self.sys_root = sys_root
        self._last: dict[str, tuple[float, float]] = {}
        self._procs: dict[int, tuple[psutil.Process, str]] = {}
        self._not_ours: set[int] = set()
        psutil.cpu_percent(interval=None)  # primes the CPU counter

    def _rate(self, key: str, counter: float, now: float) -> float | None:
        previous = self._last.get(key)
        self._last[key] = (now, counter)
        if previous is None or now <= previous[0] or counter < previous[1]:
            return None
        return (counter - previous[1]) / (now - previous[0])

    def sample(self, now: float | None = None) -> list[Sample]:
        """Read everything once."""
        now = time.monotonic() if now is None else now
        out: list[Sample] = [("cpu.percent", float(psutil.cpu_percent(interval=None)), None)]
        load1, _, _ = os.getloadavg()
        out.append(("cpu.load1", load1, None))
        mem = psutil.virtual_memory()
        out += [("mem.used_pct", float(mem.percent), None), ("mem.available_b", float(mem.available), None)]
        try:
            disk = psutil.disk_usage(str(self.data_dir))
            out += [("disk.used_pct", float(disk.percent), None), ("disk.free_b", float(disk.free), None)]
        except OSError:
            pass
        net = psutil.net_io_counters()
        if net is not None:
            for name, counter in (("net.rx_bps", net.bytes_recv), ("net.tx_bps", net.bytes_sent)):
                rate = self._rate(name, float(counter), now)
                if rate is not None:
                    out.append((name, rate, None))
        io = psutil.disk_io_counters()
        if io is not None:
            rate = self._rate("disk.write_bps", float(io.write_bytes), now)
            if rate is not None:
                out.append(("disk.write_bps", rate, None))
        out += self._programs()
        out += read_thermal(self.sys_root)
        out += throttle_samples(read_throttled(self.sys_root))
        return out

    def _programs(self) -> list[Sample]:
        out: list[Sample] = []
        seen: set[int] = set()
        for proc in psutil.process_iter(["pid"]):
            pid = int(proc.info["pid"])
            cached = self._procs.get(pid)
            if cached is None:
                if pid in self._not_ours:
                    seen.add(pid)
                    continue
                name = _program_of(proc)
                if name is None:
                    self._not_ours.add(pid)
                    seen.add(pid)
                    continue
                cached = (proc, name)
                proc.cpu_percent(None)  # primes
                self._procs[pid] = cached
            seen.add(pid)
            handle, program = cached
            try:
                tags = {"program": program}
                with handle.oneshot():
                    out.append(("proc.rss_b", float(handle.memory_info().rss), tags))
                    out.append(("proc.cpu_pct", float(handle.cpu_percent(None)), tags))
            except (psutil.Error, OSError):
                seen.discard(pid)
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        self._not_ours &= seen
        return out


def describe(samples: list[Sample]) -> list[dict[str, Any]]:
    """Samples as JSON-ready dicts (for logs and ``--once``)."""
    return [{"metric": m, "value": v, "tags": t} for m, v, t in samples]
