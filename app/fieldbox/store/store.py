"""The encrypted store: results, the sync outbox, telemetry, events and key-value config.

One :class:`Store` wraps one SQLCipher connection. Writes run in
``BEGIN IMMEDIATE`` transactions; a write method returns only after its
``COMMIT`` has been fsynced (WAL + ``synchronous=FULL``), so whatever it
acknowledged survives a crash or power cut. A failed write (disk full, busy,
corrupt) is rolled back whole and raised as a
:class:`~fieldbox.errors.StoreError`; nothing half-written remains.

Thread safety: a ``Store`` (its connection) belongs to the thread that opened
it; use one ``Store`` per thread or process (``Store.open`` is cheap: no KDF).
Any number of processes may open the same file: WAL lets readers run while one
writer writes, and writers queue on the write lock for up to
:data:`~fieldbox.store.sqlcipher.BUSY_TIMEOUT_MS`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import sqlcipher3

from fieldbox.errors import StoreError, WrongKeyError
from fieldbox.paths import data_dir
from fieldbox.store import keys as keymod
from fieldbox.store.keys import FileKeyProvider, KeyProvider
from fieldbox.store.migrations import LATEST, migrate, schema_version
from fieldbox.store.records import (
    DEFAULT_PRIORITY,
    EventRow,
    ResultIn,
    ResultRow,
    StoreInfo,
    TelemetryPoint,
)
from fieldbox.store.sqlcipher import CIPHER_SETTINGS, Connection, check_cipher_settings, connect, translate

RESULTS_TOPIC = "results"
"""Outbox topic of stored results; their ``record_id`` is ``"results/<key>"``."""

_IN_CHUNK = 500
"""Keys per ``IN (...)`` lookup when checking a batch for duplicates."""

_INSERT_RESULT = (
    "INSERT INTO results (key, workflow, agent, item, created_at, priority, result) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RESULT_IF_NEW = _INSERT_RESULT + " ON CONFLICT (key) DO NOTHING"
_INSERT_OUTBOX = (
    "INSERT INTO outbox (topic, record_id, priority, created_at, expires_at, size, payload) "
    "VALUES (?, ?, ?, ?, NULL, ?, ?)"
)
_RESULT_COLUMNS = "id, key, workflow, agent, item, created_at, priority, result"


def default_db_path() -> Path:
    """Where the device keeps its store: ``$FIELDBOX_DATA/store/fieldbox.db``."""
    return data_dir() / "store" / "fieldbox.db"


def _json_default(obj: Any) -> Any:
    """Let numpy scalars and arrays (what agents produce) through ``json.dumps``."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)
"""One compact UTF-8 encoder, built once (``json.dumps`` with options builds one per call)."""

_quote: Any = json.encoder.encode_basestring
"""JSON string literal of a ``str`` (the C function the encoder itself uses)."""


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def _explain_invalid(row: ResultIn) -> None:
    """Raise the precise error for a row that failed :class:`_Encoded`'s fast check."""
    if not isinstance(row.key, str) or not row.key:
        raise StoreError(f"result key must be a non-empty string, got {row.key!r}")
    for name in ("workflow", "agent", "item"):
        if not isinstance(getattr(row, name), str):
            raise StoreError(f"result {row.key}: {name} must be a string, got {getattr(row, name)!r}")
    if isinstance(row.priority, bool) or not isinstance(row.priority, int) or not 0 <= row.priority <= 9:
        raise StoreError(f"result {row.key}: priority must be an integer 0..9, got {row.priority!r}")
    if not isinstance(row.result, Mapping):
        raise StoreError(f"result {row.key}: result must be a mapping (a JSON object)")


class _Encoded:
    """A validated result, JSON-encoded once, ready for both INSERTs."""

    __slots__ = ("key", "outbox_row", "result_row")

    def __init__(self, row: ResultIn, now: float) -> None:
        key, priority, result = row.key, row.priority, row.result
        if not (
            type(key) is str
            and key
            and type(row.workflow) is str
            and type(row.agent) is str
            and type(row.item) is str
            and type(priority) is int
            and 0 <= priority <= 9
            and (type(result) is dict or isinstance(result, Mapping))
        ):
            _explain_invalid(row)  # raises, unless only a str/int subclass tripped the fast check
        if row.created_at is None:
            created = now
        else:
            created = float(row.created_at)
            if not math.isfinite(created):
                raise StoreError(f"result {key}: created_at must be a finite number")
        try:
            result_json = _dumps(row.result)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"result {row.key} cannot be stored as JSON: {exc}") from None
        # The outbox record is the whole result as one JSON object; spliced from
        # parts so the result itself is encoded once (JSON encoding is most of
        # the CPU time of a batched write).
        payload = (
            f'{{"key":{_quote(row.key)},"workflow":{_quote(row.workflow)},"agent":{_quote(row.agent)},'
            f'"item":{_quote(row.item)},"created_at":{created!r},"priority":{row.priority},'
            f'"result":{result_json}}}'
        ).encode()
        self.key = row.key
        self.result_row = (row.key, row.workflow, row.agent, row.item, created, row.priority, result_json)
        self.outbox_row = (
            RESULTS_TOPIC,
            f"{RESULTS_TOPIC}/{row.key}",
            row.priority,
            created,
            len(payload),
            payload,
        )


class Store:
    """An open encrypted store. Create with :meth:`Store.open`; close with :meth:`close` or ``with``."""

    def __init__(self, conn: Connection, path: Path, keys: KeyProvider) -> None:
        """Wrap an open, migrated connection; use :meth:`open` instead."""
        self._conn: Connection | None = conn
        self.path = path
        self.keys = keys

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: Path, keys: KeyProvider | None = None, *, create: bool = True) -> Store:
        """Open the store at ``path``, creating it (and its directory and key) if missing, and migrate it.

        ``keys`` defaults to a :class:`FileKeyProvider` under the data
        directory. With ``create=False`` a missing store is an error (for
        readers such as ``fieldbox store query``).
        """
        path = Path(path)
        provider: KeyProvider = keys if keys is not None else FileKeyProvider()
        key_path = keymod.key_file_for(path)
        if path.is_dir():
            raise StoreError(f"{path} is a directory, not a store file", hint="give the database file's path")
        if not create and not path.exists():
            raise StoreError(
                f"no store at {path}", hint="check --db; the device creates its store on the first write"
            )
        store_key = cls._database_key(path, key_path, provider, create)
        settings = check_cipher_settings(store_key.cipher, str(key_path))
        conn = connect(path, store_key.dek, settings, create=create)
        try:
            migrate(conn, str(path))
        except sqlcipher3.Error as exc:
            conn.close()
            raise translate(exc, path, "migrating the schema") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, provider)

    @staticmethod
    def _database_key(path: Path, key_path: Path, provider: KeyProvider, create: bool) -> keymod.StoreKey:
        """Unwrap the store's key, or make one for a new store (written before the database exists)."""
        if key_path.exists():
            return keymod.read_key(key_path, provider)
        db_has_data = path.exists() and path.stat().st_size > 0
        if db_has_data or not create:
            raise WrongKeyError(
                f"store {path} exists but its key file {key_path} is missing",
                hint=f"restore {key_path.name} from a backup; without it the store cannot be read",
            )
        keymod.make_private_dir(path.parent)
        with keymod.locked_dir(path.parent):
            if key_path.exists():  # another process created it while we waited
                return keymod.read_key(key_path, provider)
            return keymod.write_new_key(key_path, provider, CIPHER_SETTINGS)

    def close(self) -> None:
        """Close the connection (idempotent). The last closer checkpoints and removes the WAL."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlcipher3.Error):
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ transactions
    @property
    def conn(self) -> Connection:
        """The underlying connection (for other store modules' queries); raises if closed."""
        if self._conn is None:
            raise StoreError(f"store {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def transaction(self, doing: str = "writing") -> Iterator[Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back whole on any error.

        Yields the connection. Driver errors come out as
        :class:`~fieldbox.errors.StoreError` (``StoreFullError`` for a full
        disk) naming ``doing``. For modules that add their own tables (sync).
        """
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlcipher3.Error as exc:
            raise translate(exc, self.path, doing) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlcipher3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlcipher3.Error):
                raise translate(exc, self.path, doing) from exc
            raise

    def query(self, sql: str, params: Sequence[Any] = (), doing: str = "reading") -> list[tuple[Any, ...]]:
        """Run one read statement and return all rows, with errors translated."""
        try:
            return list(self.conn.execute(sql, params).fetchall())
        except sqlcipher3.Error as exc:
            raise translate(exc, self.path, doing) from exc

    # ----------------------------------------------------------------- results
    def put_result(
        self,
        key: str,
        workflow: str,
        agent: str,
        item: str,
        result: Mapping[str, Any],
        priority: int = DEFAULT_PRIORITY,
    ) -> bool:
        """Store one result and enqueue it for sync, in one transaction.

        Returns False, changing nothing, when ``key`` is already stored.
        """
        e = _Encoded(ResultIn(key, workflow, agent, item, result, priority), time.time())
        with self.transaction("storing a result") as conn:
            # One statement fewer than the batch path: the conflict clause is the duplicate check.
            if conn.execute(_INSERT_RESULT_IF_NEW, e.result_row).rowcount != 1:
                return False
            conn.execute(_INSERT_OUTBOX, e.outbox_row)
        return True

    def put_results(self, rows: Sequence[ResultIn]) -> list[bool]:
        """Store many results in one transaction (the throughput path); one flag per row.

        A row whose key is already stored, or repeats an earlier row of the
        batch, is skipped (False). Each stored result gets an outbox row
        (topic ``results``) in the same transaction, so sync never misses a
        committed result.
        """
        now = time.time()
        encoded = [_Encoded(row, now) for row in rows]
        if not encoded:
            return []
        # The batch's own repeats are found here; keys already stored, by the database.
        seen: set[str] = set()
        unique: list[_Encoded] = []
        for e in encoded:
            if e.key not in seen:
                seen.add(e.key)
                unique.append(e)
        with self.transaction("storing results") as conn:
            # Optimistic: a batch of new keys (the normal case) costs no extra lookups;
            # the UNIQUE index refuses a stored key and the savepoint undoes the attempt.
            conn.execute("SAVEPOINT put_results")
            try:
                conn.executemany(_INSERT_RESULT, [e.result_row for e in unique])
                new = unique
            except sqlcipher3.IntegrityError:
                conn.execute("ROLLBACK TO put_results")
                new = self._only_new(conn, unique)
                conn.executemany(_INSERT_RESULT, [e.result_row for e in new])
            conn.execute("RELEASE put_results")
            if new:
                conn.executemany(_INSERT_OUTBOX, [e.outbox_row for e in new])
        stored = {e.key for e in new}
        flags: list[bool] = []
        for e in encoded:
            flags.append(e.key in stored)
            stored.discard(e.key)  # a repeat later in the batch reports False
        return flags

    @staticmethod
    def _only_new(conn: Connection, rows: list[_Encoded]) -> list[_Encoded]:
        """The rows whose keys are not stored yet (inside the caller's write transaction)."""
        existing: set[str] = set()
        keys = [e.key for e in rows]
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            existing.update(
                k for (k,) in conn.execute(f"SELECT key FROM results WHERE key IN ({marks})", chunk)
            )
        return [e for e in rows if e.key not in existing]

    def has_result(self, key: str) -> bool:
        """True when a result with ``key`` is stored."""
        try:
            return self.conn.execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone() is not None
        except sqlcipher3.Error as exc:
            raise translate(exc, self.path, "reading results") from exc

    def results(self, workflow: str | None = None, limit: int = 100, after_id: int = 0) -> list[ResultRow]:
        """Results in storage order, ``limit`` at a time after ``after_id`` (keyset paging)."""
        where = "id > ?" + (" AND workflow = ?" if workflow is not None else "")
        params: list[Any] = [after_id] + ([workflow] if workflow is not None else []) + [limit]
        rows = self.query(
            f"SELECT {_RESULT_COLUMNS} FROM results WHERE {where} ORDER BY id LIMIT ?",
            params,
            "reading results",
        )
        return [
            ResultRow(id, key, wf, agent, item, created, prio, json.loads(result))
            for id, key, wf, agent, item, created, prio, result in rows
        ]

    def count_results(self, workflow: str | None = None) -> int:
        """How many results are stored (for ``workflow``, or all)."""
        if workflow is None:
            rows = self.query("SELECT count(*) FROM results", (), "counting results")
        else:
            rows = self.query(
                "SELECT count(*) FROM results WHERE workflow = ?", (workflow,), "counting results"
            )
        return int(rows[0][0])

    # ---------------------------------------------------------------------- kv
    def kv_get(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        rows = self.query("SELECT value FROM kv WHERE key = ?", (key,), "reading config")
        return json.loads(rows[0][0]) if rows else default

    def kv_set(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key``; bumps its ``version`` and ``updated_at``."""
        try:
            text = _dumps(value)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"config value for {key!r} cannot be stored as JSON: {exc}") from None
        with self.transaction("writing config") as conn:
            conn.execute(
                "INSERT INTO kv (key, value, updated_at, version) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at, version = kv.version + 1",
                (key, text, time.time()),
            )

    def kv_items(self) -> dict[str, Any]:
        """Every config key and its value."""
        return {k: json.loads(v) for k, v in self.query("SELECT key, value FROM kv ORDER BY key")}

    # ---------------------------------------------------- telemetry and events
    def add_telemetry(self, rows: Iterable[TelemetryPoint | tuple[Any, ...]]) -> int:
        """Append monitor samples in one transaction; returns how many.

        A row is a :class:`TelemetryPoint` or a tuple ``(ts, metric, value[, tags[, resolution]])``.
        """
        values: list[tuple[float, str, float, str | None, int]] = []
        for row in rows:
            point = row if isinstance(row, TelemetryPoint) else TelemetryPoint(*row)
            tags = None if point.tags is None else _dumps(point.tags)
            values.append(
                (float(point.ts), str(point.metric), float(point.value), tags, int(point.resolution))
            )
        if values:
            with self.transaction("writing telemetry") as conn:
                conn.executemany(
                    "INSERT INTO telemetry (ts, metric, value, tags, resolution) VALUES (?, ?, ?, ?, ?)",
                    values,
                )
        return len(values)

    def add_event(self, kind: str, detail: Any = None) -> int:
        """Record that something happened; ``detail`` is any JSON value. Returns the event id."""
        try:
            text = None if detail is None else _dumps(detail)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"event {kind!r} detail cannot be stored as JSON: {exc}") from None
        with self.transaction("recording an event") as conn:
            cur = conn.execute(
                "INSERT INTO events (ts, kind, detail) VALUES (?, ?, ?)", (time.time(), kind, text)
            )
            return int(cur.lastrowid)

    def events(self, kind: str | None = None, limit: int = 100) -> list[EventRow]:
        """The most recent events (newest first)."""
        where, params = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        rows = self.query(
            f"SELECT id, ts, kind, detail FROM events {where} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [EventRow(i, ts, k, None if d is None else json.loads(d)) for i, ts, k, d in rows]

    # ------------------------------------------------------------ maintenance
    def info(self) -> StoreInfo:
        """Schema version, row counts, file sizes and the key provider."""
        counts = {
            table: int(self.query(f"SELECT count(*) FROM {table}")[0][0])
            for table in ("results", "outbox", "telemetry", "events", "kv")
        }
        sizes: dict[str, int] = {}
        for suffix in ("", "-wal", "-shm", ".key"):
            p = self.path.with_name(self.path.name + suffix)
            if p.exists():
                sizes[p.name] = p.stat().st_size
        cipher = self.query("PRAGMA cipher_version")
        return StoreInfo(
            path=str(self.path),
            schema_version=schema_version(self.conn),
            code_schema_version=LATEST,
            counts=counts,
            file_sizes=sizes,
            key_provider=self.keys.describe(),
            key_warning=self.keys.warning(),
            cipher_version=str(cipher[0][0]) if cipher else "?",
            page_size=int(self.query("PRAGMA cipher_page_size")[0][0]),
        )

    def check(self) -> None:
        """Verify every page's HMAC and the b-tree structure; :class:`StoreError` on damage.

        Reads the whole file: for ``fieldbox store check``, not for every open.
        """
        problems = [str(r[0]) for r in self.query("PRAGMA cipher_integrity_check", (), "checking integrity")]
        if not problems:
            problems = [
                str(r[0])
                for r in self.query("PRAGMA integrity_check", (), "checking integrity")
                if r[0] != "ok"
            ]
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreError(
                f"store {self.path} is corrupt: {problems[0].splitlines()[0]}{more}",
                hint="move the file aside to start an empty store (results not yet synced are lost) "
                "or restore a backup",
            )
