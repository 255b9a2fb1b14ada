"""The inbox directory protocol: each file that lands is processed once, then done/ or failed/.

Life of a file (moves to done/ and failed/ are durable renames: fsync of both
directories; the claim is an atomic rename, see :meth:`Inbox.claim`)::

    inbox/x.jpg --claim--> processing/<workflow>/x.jpg --results committed--> deleted
                                                      |                        (done/x.jpg with
                                                      |                         inbox.keep_done)
                                                      \\--unusable----------> failed/x.jpg
                                                                              failed/x.jpg.reason

Rules:

* **Which files are taken.** Regular files matching the workflow's glob whose
  name does not start with ``.`` and does not end in ``.tmp``, ``.part``,
  ``.partial`` or ``.reason``, and that have not been modified for
  ``settle_seconds``. Writers should write ``x.jpg.tmp`` (or ``.x.jpg``) and
  rename it to ``x.jpg`` when complete; the settle time also protects a writer
  that writes in place (``cp``, ``scp``) as long as it does not pause longer.
* **Back-pressure.** A file is claimed only once the workflow's bounded queue
  has room; until then it stays in ``inbox/``.
* **Exactly once.** Results are committed to the store, keyed by
  workflow + content sha256 + name, *before* the file moves to ``done/``. A
  crash in between leaves the file in ``processing/``; on start every file
  there is processed again, and the store, finding its keys, stores nothing
  twice.
* **Failures.** An unusable item (empty, truncated, not an image, a model
  that fails its checksum) goes to ``failed/`` with ``<name>.reason``: one
  line saying why. The reason file is written first, so a crash leaves the
  item retried, not unexplained.
* **What is kept.** By default nothing: the results hold the input's name
  and sha256, and a plaintext copy beside the encrypted store would defeat
  it. ``inbox.keep_done`` in ``budget.toml`` keeps copies in ``done/``;
  ``done/`` and ``failed/`` are pruned by :func:`prune_kept` under the
  budget's size and age (:mod:`fieldbox.budget`).
* **Any name.** A name that is not UTF-8 (a camera's or a FAT card's
  bytes) is processed like any other; the store, events and logs carry it
  with ``\\xNN`` escapes for the bytes that are not (:func:`display_name`).
* **Name clashes.** A name already present in ``done/`` or ``failed/`` gets a
  ``~N`` suffix; a name already being processed stays in ``inbox/`` until the
  first one is finished.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import logging
import os
import stat
import time
from pathlib import Path

from fieldbox.durable import atomic_write, durable_rename, fsync_dir
from fieldbox.errors import ConfigError
from fieldbox.workflows.spec import InboxTrigger

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".reason")
"""Files being written (by convention) and our own reason files are never taken."""


STALE_TEMPORARY_S = 3600.0
"""A temporary-named file unchanged this long gets a logged reason (it is still never taken)."""


def is_candidate(name: str, pattern: str) -> bool:
    """Whether a file name may be taken from the inbox (see the module docstring)."""
    if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def display_name(name: str) -> str:
    """A file name as valid text for the store, events and logs.

    Linux names are bytes; Python gives undecodable bytes back as lone
    surrogates, which no UTF-8 writer accepts. Those bytes become ``\\xNN``
    escapes (``b"caf\\xe9.jpg"`` -> ``"caf\\xe9.jpg"``); a UTF-8 name is unchanged.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def one_line(text: str, limit: int = 300) -> str:
    """``text`` squeezed to one line of at most ``limit`` characters (for reason files)."""
    line = " ".join(str(text).split()) or "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _resolve(data_dir: Path, directory: str) -> Path:
    path = Path(directory)
    return path if path.is_absolute() else data_dir / path


class Inbox:
    """The directories of one workflow's inbox trigger and the moves between them."""

    def __init__(self, data_dir: Path, trigger: InboxTrigger, processing: str) -> None:
        self.trigger = trigger
        self.inbox = _resolve(data_dir, trigger.dir)
        self.processing = _resolve(data_dir, processing)
        self.done = _resolve(data_dir, trigger.done)
        self.failed = _resolve(data_dir, trigger.failed)
        self._explained: set[str] = set()

    def _leave(self, name: str, reason: str) -> None:
        """Log, once per name, why something in the inbox is left where it is."""
        if name in self._explained:
            return
        if len(self._explained) > 10_000:  # bounded: a name may be explained again, never unbounded
            self._explained.clear()
        self._explained.add(name)
        log.warning("inbox %s: %s %s; left where it is", self.inbox, display_name(name), reason)

    def ensure_dirs(self) -> None:
        """Create the four directories (all must be on one filesystem for renames)."""
        for directory in (self.inbox, self.processing, self.done, self.failed):
            directory.mkdir(parents=True, exist_ok=True)
        devices = {d.stat().st_dev for d in (self.inbox, self.processing, self.done, self.failed)}
        if len(devices) != 1:
            raise ConfigError(
                f"inbox {self.inbox}: inbox, processing, done and failed must be on one filesystem",
                "files move between them by rename",
            )

    def ready(self, now: float | None = None) -> list[Path]:
        """Files in the inbox that may be claimed now, oldest first."""
        now = time.time() if now is None else now
        found: list[tuple[float, str, Path]] = []
        try:
            entries = list(os.scandir(self.inbox))
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                self._leave(entry.name, "is a directory (only files are taken)")
                continue
            if not is_candidate(entry.name, self.trigger.glob):
                if not (entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES)):
                    self._leave(entry.name, f"does not match glob {self.trigger.glob!r}")
                else:
                    self._stale_temporary(entry, now)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if now - st.st_mtime < self.trigger.settle_seconds:
                continue
            found.append((st.st_mtime, entry.name, Path(entry.path)))
        found.sort()
        return [path for _, _, path in found]

    def _stale_temporary(self, entry: os.DirEntry[str], now: float) -> None:
        """A name that says "still being written" (``.x``, ``x.tmp``): explained once it is an hour old."""
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            return
        if age > STALE_TEMPORARY_S and not entry.name.endswith(".reason"):
            self._leave(entry.name, f"has a temporary name and has not changed for {age / 3600:.0f} h "
                        "(rename it when complete)")  # fmt: skip

    def claim(self, path: Path) -> Path | None:
        """Move an inbox file to processing/; None if that name is still being processed.

        An atomic rename *without* fsync, on purpose: after a power cut the
        file is in inbox/ or in processing/ (never both, never neither, on a
        journalling filesystem), and both are taken on start, so making the
        claim durable would buy nothing. It would cost two directory fsyncs
        per file (~3 ms each on this project's measurements) in the one
        thread that feeds the workflow.
        """
        target = self.processing / path.name
        if target.exists() or target.is_symlink():
            return None
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None  # taken away by someone else meanwhile
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise ConfigError(
                    f"cannot move {path} to {target}: different filesystems",
                    "keep inbox and processing directories on one filesystem",
                ) from None
            raise
        return target

    def leftovers(self) -> list[Path]:
        """Files a previous run left in processing/ (crash recovery), oldest first."""
        try:
            entries = [e for e in os.scandir(self.processing) if not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                found.append((st.st_mtime, entry.name, Path(entry.path)))
        found.sort()
        return [path for _, _, path in found]

    def finish(self, path: Path, keep: bool = False) -> Path | None:
        """After its results were committed: delete a processed file, or move it to done/ with ``keep``."""
        if not keep:
            path.unlink()
            fsync_dir(path.parent)
            return None
        target = _free_name(self.done, path.name)
        os.utime(path)  # done/ ages from when it was processed, not from when the camera wrote it
        durable_rename(path, target)
        return target

    def fail(self, path: Path, reason: str) -> Path:
        """Move an unusable file to failed/, with ``<name>.reason`` written first."""
        target = _free_name(self.failed, path.name)
        atomic_write(target.with_name(target.name + ".reason"), (one_line(reason) + "\n").encode())
        durable_rename(path, target)
        return target


def _free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name~1``, ``name~2``... if taken (never overwrite a kept file)."""
    target = directory / name
    n = 0
    while target.exists() or target.is_symlink() or target.with_name(target.name + ".reason").exists():
        n += 1
        stem, dot, suffix = name.partition(".")
        target = directory / (f"{stem}~{n}{dot}{suffix}")
    return target


def prune_kept(
    directory: Path, max_bytes: int, max_age_s: float, now: float | None = None
) -> tuple[int, int]:
    """Delete the oldest files of ``directory`` until it is under both limits; (files, bytes) deleted.

    A ``<name>.reason`` goes with its file and counts towards the bytes. Only
    regular files are touched; one fsync of the directory makes the deletes
    durable.
    """
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0, 0
    files_: dict[str, tuple[float, int]] = {}
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            files_[entry.name] = (st.st_mtime, st.st_size)
    groups: list[tuple[float, str, list[str], int]] = []
    for name in files_:
        if name.endswith(".reason") and name[: -len(".reason")] in files_:
            continue  # goes with its file
        names = [name] + ([name + ".reason"] if name + ".reason" in files_ else [])
        newest = max(files_[n][0] for n in names)  # the reason file says when it failed
        groups.append((newest, name, names, sum(files_[n][1] for n in names)))
    groups.sort()
    total = sum(g[3] for g in groups)
    files = freed = 0
    for mtime, _, names, size in groups:
        if total <= max_bytes and now - mtime <= max_age_s:
            break
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
        total -= size
        freed += size
        files += 1
    if files:
        fsync_dir(directory)
    return files, freed
