"""Live settings: the config-document keys that change what a running device does.

A config document (:mod:`fieldbox.sync.configdoc`) is edited on the server
(``PUT /v1/devices/<id>/config``) or on the device, merged by the sync client
and kept in the store's ``kv`` table. The keys below are the ones the device
reads; each program picks its own keys up while it runs (the sync client after
each config exchange, the monitor at each telemetry flush), so a change takes
effect within one ``config_interval_s`` plus one flush, with no restart. A
key's value overrides the same setting of the program's file (``sync.toml``,
``monitor.toml``); deleting the key goes back to the file's value.

A value of the wrong type or outside its range is not applied: the program
keeps its current value and logs one line naming the key, the value and the
range, once per distinct bad value. Keys not listed here are kept and synced
but do nothing on the device (a fleet may use them for its own bookkeeping).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Setting:
    """One key: the program that reads it, the attribute of its config it sets, and its range."""

    key: str
    program: str
    attribute: str
    low: float
    high: float
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("monitor.interval_s", "monitor", "interval_s", 1.0, 3600.0,
            "seconds between resource samples (monitor.toml interval_s)"),
    Setting("sync.idle_s", "sync", "idle_s", 0.5, 3600.0,
            "how often the sync client looks at an empty outbox (sync.toml idle_s)"),
    Setting("sync.config_interval_s", "sync", "config_interval_s", 5.0, 86400.0,
            "how often the config document is exchanged with the server (sync.toml config_interval_s)"),
)  # fmt: skip
"""Every key the device reads; ``fieldbox`` docs and the README table are made from this."""


def for_program(program: str) -> tuple[Setting, ...]:
    """The keys ``program`` reads."""
    return tuple(s for s in SETTINGS if s.program == program)


def check(setting: Setting, value: Any) -> str | None:
    """Why ``value`` cannot be used for ``setting``, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{setting.key} = {value!r}: expected a number of seconds"
    if not setting.low <= float(value) <= setting.high:
        return f"{setting.key} = {value!r}: outside {setting.low:g} .. {setting.high:g}"
    return None


class LiveSettings:
    """Applies a program's keys to its config object, remembering the file's values to go back to."""

    def __init__(self, program: str, base: Any) -> None:
        self.program = program
        self.base = base
        self.current = base
        self._reported: set[str] = set()

    def apply(self, values: Mapping[str, Any]) -> Any:
        """The config with ``values`` (the document's live keys) applied; logs each change and refusal."""
        changes: dict[str, Any] = {}
        for setting in for_program(self.program):
            default = getattr(self.base, setting.attribute)
            if setting.key not in values:
                changes[setting.attribute] = default
                continue
            value = values[setting.key]
            problem = check(setting, value)
            if problem is None:
                changes[setting.attribute] = float(value)
                continue
            changes[setting.attribute] = getattr(self.current, setting.attribute)
            if problem not in self._reported:
                self._reported.add(problem)
                log.error("config document: %s; keeping %g", problem, changes[setting.attribute])
        updated = dataclasses.replace(self.current, **changes)
        for name, value in changes.items():
            was = getattr(self.current, name)
            if value != was:
                log.info("setting %s.%s = %g (was %g) from the config document",
                         self.program, name, value, was)  # fmt: skip
        self.current = updated
        return updated


def keys_table() -> list[tuple[str, str, str, str]]:
    """(key, program, range, meaning) for the docs."""
    return [(s.key, s.program, f"{s.low:g} .. {s.high:g}", s.doc) for s in SETTINGS]
