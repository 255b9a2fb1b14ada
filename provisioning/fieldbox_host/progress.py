"""Progress of long host work on stderr: a live line on a terminal, a line per step in a log."""

from __future__ import annotations

import sys
import time


class Progress:
    """``Progress("bundle")(done, total)``: percent, MiB, rate and time left.

    On a terminal the line is rewritten in place; otherwise (CI logs) one line
    is printed per ``step`` percent, so a long step never looks hung.
    """

    def __init__(self, what: str, step: int = 10, unit: int = 1 << 20, unit_name: str = "MiB") -> None:
        self.what = what
        self.step = step
        self.unit = unit
        self.unit_name = unit_name
        self.started = time.monotonic()
        self.last_pct = -1
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else done * 100 // total
        if not self.tty and pct < 100 and pct // self.step == self.last_pct // self.step:
            return
        if self.tty and pct == self.last_pct and done < total:
            return
        self.last_pct = pct
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        line = (
            f"  {self.what}: {pct:3d}% ({done / self.unit:.0f}/{total / self.unit:.0f} {self.unit_name}, "
            f"{rate / self.unit:.1f} {self.unit_name}/s, {left:.0f} s left)"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if done >= total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
