"""The build manifest: what exactly is in an image, written next to it as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fieldbox.durable import atomic_write
from fieldbox_host.image import layout


def debian_packages(listing: Path) -> list[dict[str, str]]:
    """``name\\tversion\\tarch`` lines (from dpkg-query) as records, sorted by name."""
    out: list[dict[str, str]] = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out.append({"name": parts[0], "version": parts[1], "arch": parts[2]})
    return sorted(out, key=lambda r: r["name"])


def write(path: Path, data: dict[str, Any]) -> None:
    """Write the manifest durably (temp file + fsync + rename)."""
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def partitions_record(parts: list[layout.Partition]) -> list[dict[str, Any]]:
    """The partition table as manifest records."""
    return [{**asdict(p), "partuuid": p.partuuid} for p in parts]
