"""One item flowing through a workflow, and the idempotency keys of its results.

An item's results are keyed by *what* it is, not by when it arrived::

    item key   = "<workflow>:<sha256 of the content>:<item name>"
    result key = "<item key>#<step index>"          (one stored result per step)

so processing the same file again (a retry after a crash between "committed to
the store" and "deleted or moved to done/") finds its results already stored and adds
nothing: the store's ``put_results`` is idempotent by key. The same bytes
under another name, or another content under the same name, are a new item.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path


def item_key(workflow: str, name: str, content_sha256: str) -> str:
    """The idempotency key of one item of ``workflow``."""
    return f"{workflow}:{content_sha256}:{name}"


def result_key(item: str, step_index: int) -> str:
    """The store key of step ``step_index``'s result for the item with key ``item``."""
    return f"{item}#{step_index}"


def result_keys(workflow: str, name: str, data: bytes, steps: int) -> list[str]:
    """Every store key a workflow of ``steps`` steps writes for ``data`` named ``name``."""
    key = item_key(workflow, name, hashlib.sha256(data).hexdigest())
    return [result_key(key, i) for i in range(steps)]


@dataclass
class Item:
    """One unit of work: its name, where it came from, and (once read) its bytes."""

    workflow: str
    name: str
    origin: str
    """'inbox', 'socket' or 'interval'."""
    data: bytes | None = None
    path: Path | None = None
    """For inbox items: the claimed file in the processing directory (read by the worker)."""
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        """Hex sha256 of the item's bytes (which must have been read)."""
        if self._sha256 is None:
            if self.data is None:
                raise ValueError(f"item {self.name}: bytes not read yet")
            self._sha256 = hashlib.sha256(self.data).hexdigest()
        return self._sha256

    @property
    def key(self) -> str:
        """The item's idempotency key (see the module docstring)."""
        return item_key(self.workflow, self.name, self.sha256)
