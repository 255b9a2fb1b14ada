"""One typed schema per declarative file: dataclasses drive parsing, defaults, validation and docs.

A manifest or workflow file is TOML (or JSON); its schema is a frozen dataclass
whose field types say what is allowed and whose ``field(metadata=...)`` carries
the documentation (``doc``) and any extra check (``check``). ``parse`` turns a
mapping into the dataclass or raises :class:`~fieldbox.errors.ConfigError`
naming the file, the dotted key and what was expected, e.g.::

    agents/face.toml: preprocess.mean: expected a list of float, got 'x'

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``pathlib.Path``,
``Literal[...]``, ``enum.Enum`` subclasses, ``list[T]``, ``tuple[T, ...]``,
``dict[str, T]``, ``T | None`` and nested dataclasses. Unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from fieldbox.errors import ConfigError

T = TypeVar("T")

Check = Callable[[Any], str | None]
"""An extra validation: returns an error text, or None when the value is fine."""


def doc_field(
    doc: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    check: Check | None = None,
) -> Any:
    """A dataclass field carrying its documentation and an optional extra check."""
    metadata: dict[str, Any] = {"doc": doc}
    if check is not None:
        metadata["check"] = check
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def positive(value: Any) -> str | None:
    """Check: the number is > 0."""
    return None if value > 0 else "must be greater than 0"


def non_negative(value: Any) -> str | None:
    """Check: the number is >= 0."""
    return None if value >= 0 else "must not be negative"


def unit_interval(value: Any) -> str | None:
    """Check: the number lies in [0, 1]."""
    return None if 0.0 <= value <= 1.0 else "must lie between 0 and 1"


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"a table of {_describe(get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " or ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a table"
    if tp is Path:
        return "a path"
    return getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Parser:
    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, where: str, message: str) -> ConfigError:
        location = f"{self.source}: {where}" if where else self.source
        return ConfigError(f"{location}: {message}")

    def value(self, tp: Any, raw: Any, where: str) -> Any:
        origin = get_origin(tp)
        if tp is Any:
            return raw
        if origin in (types.UnionType, typing.Union):
            members = [a for a in get_args(tp) if a is not type(None)]
            if raw is None and len(members) < len(get_args(tp)):
                return None
            if len(members) == 1:
                # ``T | None``: T's own error names the exact key that is wrong.
                return self.value(members[0], raw, where)
            for member in members:
                try:
                    return self.value(member, raw, where)
                except ConfigError:
                    pass
            raise self.fail(where, f"expected {_describe(tp)}, got {_short(raw)}")
        if origin is Literal:
            if raw in get_args(tp) and type(raw) in {type(a) for a in get_args(tp)}:
                return raw
            raise self.fail(where, f"expected {_describe(tp)}, got {_short(raw)}")
        if origin is list or origin is tuple:
            if not isinstance(raw, list | tuple):
                raise self.fail(where, f"expected {_describe(tp)}, got {_short(raw)}")
            item_tp = get_args(tp)[0]
            items = [self.value(item_tp, item, f"{where}[{i}]") for i, item in enumerate(raw)]
            return items if origin is list else tuple(items)
        if origin is dict:
            if not isinstance(raw, Mapping):
                raise self.fail(where, f"expected {_describe(tp)}, got {_short(raw)}")
            key_tp, val_tp = get_args(tp)
            out = {}
            for key, val in raw.items():
                if not isinstance(key, str):
                    raise self.fail(where, f"keys must be text, got {_short(key)}")
                out[self.value(key_tp, key, f"{where}.{key}")] = self.value(
                    val_tp, val, f"{where}.{key}"
                )
            return out
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if not isinstance(raw, Mapping):
                raise self.fail(where, f"expected a table, got {_short(raw)}")
            return self.dataclass(tp, raw, where)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            try:
                return tp(raw)
            except ValueError:
                raise self.fail(where, f"expected {_describe(tp)}, got {_short(raw)}") from None
        if tp is bool:
            if isinstance(raw, bool):
                return raw
        elif tp is int:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
        elif tp is float:
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                if raw != raw or raw in (float("inf"), float("-inf")):
                    raise self.fail(where, "expected a finite number")
                return float(raw)
        elif tp is str:
            if isinstance(raw, str):
                if "\x00" in raw:
                    raise self.fail(where, "text must not contain NUL characters")
                return raw
        elif tp is Path:
            if isinstance(raw, str) and raw and "\x00" not in raw:
                path = Path(raw)
                if self.base_dir is not None and not path.is_absolute():
                    path = self.base_dir / path
                return path
        else:  # pragma: no cover - a schema bug, not bad input
            raise TypeError(f"unsupported schema type {tp!r} at {where}")
        raise self.fail(where, f"expected {_describe(tp)}, got {_short(raw)}")

    def dataclass(self, cls: type[T], raw: Mapping[str, Any], where: str) -> T:
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields))
            prefix = f"{where}." if where else ""
            raise self.fail(
                f"{prefix}{unknown[0]}", f"unknown key (known keys here: {known})"
            )
        kwargs: dict[str, Any] = {}
        for name, fld in fields.items():
            key_where = f"{where}.{name}" if where else name
            if name not in raw:
                if (
                    fld.default is dataclasses.MISSING
                    and fld.default_factory is dataclasses.MISSING
                ):
                    raise self.fail(key_where, "missing (this key is required)")
                continue
            value = self.value(hints[name], raw[name], key_where)
            check = fld.metadata.get("check")
            if check is not None and value is not None:
                problem = check(value)
                if problem:
                    raise self.fail(key_where, problem)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise self.fail(where, str(exc)) from None


def parse(cls: type[T], raw: Any, source: str = "<config>", base_dir: Path | None = None) -> T:
    """Build a ``cls`` instance from ``raw`` (a mapping), validating every key.

    Relative paths are resolved against ``base_dir`` when it is given, so a
    manifest can name its model file next to itself.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a table at the top level, got {_short(raw)}")
    return _Parser(source, base_dir).dataclass(cls, raw, "")


def read_document(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict, with a one-line error for any failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "check the path") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"{path}: invalid {kind}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a table at the top level")
    return doc


def load(cls: type[T], path: Path) -> T:
    """Read and validate a TOML/JSON file against the dataclass schema ``cls``."""
    path = Path(path)
    return parse(cls, read_document(path), source=str(path), base_dir=path.parent)


def describe_schema(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows of (key, type, default, doc) for documentation, nested tables flattened."""
    rows: list[tuple[str, str, str, str]] = []
    hints = get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if not fld.init:
            continue
        key = f"{prefix}{fld.name}"
        tp = hints[fld.name]
        if fld.default is not dataclasses.MISSING:
            default = repr(fld.default.value if isinstance(fld.default, enum.Enum) else fld.default)
        elif fld.default_factory is not dataclasses.MISSING:
            default = repr(fld.default_factory())
        else:
            default = "required"
        rows.append((key, _describe(tp), default, fld.metadata.get("doc", "")))
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            rows.extend(describe_schema(tp, prefix=f"{key}."))
    return rows
