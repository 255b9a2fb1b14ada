"""``make bench``: one table of figures, every ratio measured in the same run.

Each benchmark is a function returning :class:`Row` s; it measures ours and the
baseline back to back on the same machine, model and data, so a ratio never
mixes runs. Sections register themselves in :data:`SECTIONS`; a section whose
prerequisites are missing (no built image, say) raises :class:`Skip` with the
reason, which is printed in the table instead of a number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure, what it is compared with, and the target."""

    section: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """``value / baseline`` when there is a baseline."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


class Skip(Exception):
    """A section could not run here; the message says why."""


Section = Callable[[], list[Row]]

SECTIONS: dict[str, str] = {
    # section name -> "module:function"; each returns list[Row]
    "store": "fieldbox_host.bench_store:bench",
    "models": "fieldbox_host.bench_models:bench",
    "runner": "fieldbox_host.bench_agents:bench",
    "workflow": "fieldbox_host.bench_workflow:bench",
    "image": "fieldbox_host.bench_image:run",
    "sync": "fieldbox_host.bench_sync:bench",
    "ota": "fieldbox_host.bench_ota:run",
}


def machine() -> str:
    """A short description of where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def render(rows: Sequence[Row], skipped: dict[str, str]) -> str:
    """A Markdown table of the rows (README-ready)."""
    lines = [
        "| section | figure | ours | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = f"{_fmt(r.baseline)} {r.unit} ({r.baseline_name})" if r.baseline is not None else "-"
        ratio = _fmt(r.ratio)
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        name = r.name + (f" — {r.note}" if r.note else "")
        lines.append(
            f"| {r.section} | {name} | {_fmt(r.value)} {r.unit} | {base} | {ratio} | {r.target} | {met} |"
        )
    for section, why in skipped.items():
        lines.append(f"| {section} | not measured: {why} | - | - | - | - | - |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections (all by default) and print the table."""
    parser = argparse.ArgumentParser(prog="fieldbox-bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"sections to run (default all: {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    chosen = args.sections or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        print(f"fieldbox-bench: error: unknown section {unknown[0]!r}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for name in chosen:
        module_name, func_name = SECTIONS[name].split(":")
        func: Section = getattr(importlib.import_module(module_name), func_name)
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(func())
        except Skip as why:
            skipped[name] = str(why)
    print(f"Measured {dt.date.today().isoformat()} on {machine()}\n")
    print(render(rows, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
