"""The workflow file: one typed schema for trigger -> agent steps -> sinks.

A workflow file (TOML or JSON) in ``$FIELDBOX_ETC/workflows/`` declares one
workflow. Example (the shipped demo, ``face-inbox.toml``)::

    name = "face-inbox"
    description = "Every image that lands in the inbox -> face detector -> store"

    [trigger.inbox]            # files that land in $FIELDBOX_DATA/inbox
    dir = "inbox"
    glob = "*"

    [trigger.socket]           # and `fieldbox workflow submit face-inbox FILE`

    [[steps]]
    agent = "face-detector"

    [sinks.store]
    priority = 2               # 0 = synced first ... 9 = last

    [sinks.log]

A workflow has one or more triggers (``inbox``, ``interval``, ``socket``), one
or more steps run in order (each names an agent the runner has loaded; a later
step can take the previous step's JSON result as its input instead of the
item), and one or more sinks (``store`` with a sync priority, ``log``).
Directories are relative to ``$FIELDBOX_DATA`` unless absolute.

``fieldbox workflow check --schema`` prints every key with its type, default
and documentation, from :func:`fieldbox.schema.describe_schema`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from fieldbox import schema
from fieldbox.errors import ConfigError
from fieldbox.schema import doc_field, positive

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
WORKFLOW_SUFFIXES = (".toml", ".json")


def _name_ok(value: Any) -> str | None:
    if _NAME.match(value):
        return None
    return "must be 1-64 of a-z 0-9 . _ - starting with a letter or digit"


def _dir_ok(value: Any) -> str | None:
    if not value:
        return "must not be empty"
    if "\x00" in value:
        return "must not contain NUL"
    if ".." in Path(value).parts:
        return "must not contain '..'"
    return None


def _optional_dir_ok(value: Any) -> str | None:
    return _dir_ok(value) if value else None


def _glob_ok(value: Any) -> str | None:
    if not value or "/" in value:
        return "must be a file-name pattern without '/' (e.g. '*.jpg')"
    return None


def _priority_ok(value: Any) -> str | None:
    return None if 0 <= value <= 9 else "must be 0 (synced first) to 9 (synced last)"


@dataclass(frozen=True)
class InboxTrigger:
    """Files that land in a directory, each processed once, then deleted (or kept in done/) or failed/."""

    dir: str = doc_field("directory watched for new files", default="inbox", check=_dir_ok)
    glob: str = doc_field("which file names to take (fnmatch pattern)", default="*", check=_glob_ok)
    done: str = doc_field(
        "where processed files are kept, with budget.toml inbox.keep_done (else they are deleted)",
        default="done",
        check=_dir_ok,
    )
    failed: str = doc_field(
        "where unusable files go, each with <name>.reason", default="failed", check=_dir_ok
    )
    processing: str = doc_field(
        "where claimed files wait while processed (default processing/<workflow>); "
        "files left here by a crash are retried on start",
        default="",
        check=_optional_dir_ok,
    )
    poll_seconds: float = doc_field("how often the directory is scanned", default=0.2, check=positive)
    settle_seconds: float = doc_field(
        "a file is taken only once it has not changed for this long (writers should write "
        "x.tmp and rename it; dotfiles and *.tmp/*.part are never taken)",
        default=0.5,
        check=schema.non_negative,
    )


@dataclass(frozen=True)
class IntervalSource:
    """Where an interval trigger gets its item: a file's current bytes or a command's stdout."""

    path: str = doc_field("read this file each tick (e.g. a camera's latest frame)", default="")
    command: list[str] = doc_field(
        "run this command each tick; its stdout is the item", default_factory=list
    )
    timeout_seconds: float = doc_field("how long the command may run", default=10.0, check=positive)

    def __post_init__(self) -> None:
        if bool(self.path) == bool(self.command):
            raise ValueError("source: give exactly one of 'path' or 'command'")


@dataclass(frozen=True)
class IntervalTrigger:
    """Every N seconds, take one item from a source."""

    every_seconds: float = doc_field("seconds between ticks", check=positive)
    source: IntervalSource = doc_field("where each tick's item comes from")
    item_name: str = doc_field("name prefix of each tick's item", default="tick")


@dataclass(frozen=True)
class SocketTrigger:
    """Items submitted over ``$FIELDBOX_RUN/workflows/workflows.sock`` (``fieldbox workflow submit``)."""

    enabled: bool = doc_field("accept submissions for this workflow", default=True)


@dataclass(frozen=True)
class Triggers:
    """What starts the workflow on an item; at least one."""

    inbox: InboxTrigger | None = doc_field("a watched directory", default=None)
    interval: IntervalTrigger | None = doc_field("a timer with a source", default=None)
    socket: SocketTrigger | None = doc_field("local socket submissions", default=None)

    def __post_init__(self) -> None:
        if self.inbox is None and self.interval is None and self.socket is None:
            raise ValueError("needs at least one of [trigger.inbox], [trigger.interval], [trigger.socket]")


@dataclass(frozen=True)
class Step:
    """One agent call."""

    agent: str = doc_field("name of an agent the runner has loaded", check=_name_ok)
    input: Literal["item", "previous"] = doc_field(
        "what the agent gets: the item's bytes, or the previous step's result as JSON", default="item"
    )


@dataclass(frozen=True)
class StoreSink:
    """Commit every step's result to the encrypted store (and its sync outbox)."""

    priority: int = doc_field("sync priority: 0 = first ... 9 = last", default=5, check=_priority_ok)


@dataclass(frozen=True)
class LogSink:
    """Write one line per item to the workflows log: its name, the steps stored and the time taken."""

    level: Literal["debug", "info", "warning"] = doc_field("log level of the line", default="info")
    contents: bool = doc_field(
        "also write the last step's result (up to 300 characters) into the line: plaintext outside "
        "the encrypted store, so off unless you want results readable in the log",
        default=False,
    )


@dataclass(frozen=True)
class Sinks:
    """Where results go; at least one."""

    store: StoreSink | None = doc_field("the encrypted store", default=None)
    log: LogSink | None = doc_field("the log", default=None)

    def __post_init__(self) -> None:
        if self.store is None and self.log is None:
            raise ValueError("needs at least one of [sinks.store], [sinks.log]")


@dataclass(frozen=True)
class QueueSpec:
    """The bounded queue between triggers and steps (back-pressure)."""

    size: int = doc_field(
        "items admitted but not finished, at most; a full queue holds inbox files back and "
        "answers socket submissions with 'busy'",
        default=16,
        check=positive,
    )
    workers: int = doc_field("items processed at the same time", default=2, check=positive)


def _steps_ok(value: Any) -> str | None:
    return None if value else "needs at least one [[steps]] entry"


@dataclass(frozen=True)
class WorkflowSpec:
    """One workflow: trigger(s) -> steps -> sink(s)."""

    name: str = doc_field("unique workflow name", check=_name_ok)
    trigger: Triggers = doc_field("what feeds the workflow")
    steps: list[Step] = doc_field("agent calls, in order", check=_steps_ok)
    sinks: Sinks = doc_field("where results go")
    description: str = doc_field("free text", default="")
    queue: QueueSpec = doc_field("back-pressure limits", default_factory=QueueSpec)
    source: str = field(default="", init=False, compare=False)
    """The file it was read from (set by :func:`parse_workflow`, not a key in the file)."""

    def __post_init__(self) -> None:
        if self.steps and self.steps[0].input == "previous":
            raise ValueError("steps[0].input: the first step has no previous step; use 'item'")

    @property
    def processing_dir(self) -> str:
        """The inbox trigger's processing directory (relative to the data dir unless absolute)."""
        inbox = self.trigger.inbox
        if inbox is None:
            return f"processing/{self.name}"
        return inbox.processing or f"processing/{self.name}"


def parse_workflow(raw: Any, source: str = "<workflow>") -> WorkflowSpec:
    """Validate a mapping as a workflow; :class:`ConfigError` naming the key otherwise."""
    spec = schema.parse(WorkflowSpec, raw, source=source)
    object.__setattr__(spec, "source", source)  # frozen: set once, right after validation
    return spec


def load_workflow(path: Path) -> WorkflowSpec:
    """Read and validate one workflow file."""
    path = Path(path)
    return parse_workflow(schema.read_document(path), source=str(path))


def workflow_files(directory: Path) -> list[Path]:
    """The workflow files in ``directory`` (``*.toml``, ``*.json``; dotfiles skipped), by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory of workflow files")
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in WORKFLOW_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def load_workflows(directory: Path, errors: dict[str, str] | None = None) -> dict[str, WorkflowSpec]:
    """Every workflow in ``directory`` by name; names and inbox directories must be unique.

    Without ``errors`` the first invalid file raises :class:`ConfigError`. With
    it, each invalid file's one-line error is stored under its file name and
    the others still load, so one bad file does not stop every workflow.
    """
    specs: dict[str, WorkflowSpec] = {}
    inboxes: dict[str, str] = {}
    for path in workflow_files(directory):
        try:
            spec = load_workflow(path)
            if spec.name in specs:
                raise ConfigError(
                    f"{path}: name: workflow {spec.name!r} is also declared in {specs[spec.name].source}"
                )
            inbox_dir = str(Path(spec.trigger.inbox.dir)) if spec.trigger.inbox is not None else None
            if inbox_dir is not None and inbox_dir in inboxes:
                raise ConfigError(
                    f"{path}: trigger.inbox.dir: {inbox_dir!r} is already the inbox of "
                    f"workflow {inboxes[inbox_dir]!r}",
                    "give each workflow its own inbox directory",
                )
        except ConfigError as exc:
            if errors is None:
                raise
            errors[path.name] = str(exc)
            continue
        if inbox_dir is not None:
            inboxes[inbox_dir] = spec.name
        specs[spec.name] = spec
    return specs


def schema_rows(cls: type = WorkflowSpec, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) of every key of a workflow file, optional and list tables included.

    :func:`fieldbox.schema.describe_schema` flattens plain nested tables; this
    also opens ``T | None`` and ``list[T]`` tables (``trigger.inbox.*``,
    ``steps[].*``), which is most of a workflow file.
    """
    rows: list[tuple[str, str, str, str]] = []
    hints = get_type_hints(cls)
    for row in schema.describe_schema(cls, prefix):
        name = row[0][len(prefix) :]
        if "." in name:
            continue  # a plain nested table's keys: recursed into below, like the others
        rows.append(row)
        tp = hints[name]
        origin = get_origin(tp)
        if origin is list:
            members, key = [get_args(tp)[0]], f"{row[0]}[]."
        elif origin in (UnionType, Union):
            members, key = [a for a in get_args(tp) if a is not type(None)], f"{row[0]}."
        else:
            members, key = [tp], f"{row[0]}."
        for member in members:
            if dataclasses.is_dataclass(member) and isinstance(member, type):
                rows.extend(schema_rows(member, key))
    return rows
