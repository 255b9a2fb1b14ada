"""The store's schema, as a numbered list of migrations.

``PRAGMA user_version`` is the schema version: 0 for a new file, N after
migration N. Each migration runs in its own ``BEGIN IMMEDIATE`` transaction
together with the ``user_version`` bump, so a crash or a full disk leaves the
database at the previous version, never half-migrated (SQLite's DDL is
transactional). Concurrent openers serialise on the write lock and re-read the
version inside the transaction, so a migration runs exactly once.

To change the schema, append a :class:`Migration` with the next number; never
edit one that has shipped (devices in the field have already run it). The sync
engineer extends ``outbox`` this way.

Conventions: times are Unix seconds (REAL, UTC); JSON is stored as compact
TEXT; ``priority`` is 0 (most urgent) to 9 (least), default 5.

**Both root slots share the store.** After an update the new slot migrates
``/data``'s store; if its trial fails, the old slot must still open it. So the
schema stays compatible: a migration only adds tables, columns with defaults
and indexes, which older code ignores, and an older release opens a newer
store as long as the store's ``schema_compat.min_reader`` (a one-row table; a
store without it counts as strict) is not above the old code's
:data:`LATEST`. A migration that older code cannot live with is marked
``breaking``; it raises :data:`MIN_READER`, which the image build records and
``fieldbox release`` publishes, and a device refuses to install a release
whose ``MIN_READER`` is above its own ``LATEST`` (the rollback could not open
the store). The first migration after 3 must also create ``schema_compat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fieldbox.errors import StoreError

APPLICATION_ID = 0x46424F58
"""``PRAGMA application_id`` of a fieldbox store: ASCII ``FBOX``."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: SQL statements that take version ``version - 1`` to ``version``."""

    version: int
    name: str
    statements: tuple[str, ...]
    breaking: bool = False
    """Older code cannot use the database after this step (see the module docstring)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "results, sync outbox, key-value config",
        (
            f"PRAGMA application_id = {APPLICATION_ID}",
            # One row per result an agent produced. `key` is the caller's
            # idempotency key: storing the same key twice changes nothing.
            """CREATE TABLE results (
                id         INTEGER PRIMARY KEY,
                key        TEXT    NOT NULL UNIQUE,
                workflow   TEXT    NOT NULL,
                agent      TEXT    NOT NULL,
                item       TEXT    NOT NULL,
                created_at REAL    NOT NULL,
                priority   INTEGER NOT NULL,
                result     TEXT    NOT NULL
            )""",
            "CREATE INDEX results_by_workflow ON results (workflow, id)",
            # The sync queue. A row is written in the same transaction as the
            # record it carries, so sync never misses a committed record;
            # `record_id` is the server's de-duplication id.
            """CREATE TABLE outbox (
                id         INTEGER PRIMARY KEY,
                topic      TEXT    NOT NULL,
                record_id  TEXT    NOT NULL UNIQUE,
                priority   INTEGER NOT NULL,
                created_at REAL    NOT NULL,
                expires_at REAL,
                size       INTEGER NOT NULL,
                payload    BLOB    NOT NULL
            )""",
            "CREATE INDEX outbox_by_priority ON outbox (priority, created_at, id)",
            # Config documents: JSON values; `version` counts local writes,
            # `hlc` is reserved for the sync conflict rule (hybrid logical clock).
            """CREATE TABLE kv (
                key        TEXT    PRIMARY KEY,
                value      TEXT    NOT NULL,
                updated_at REAL    NOT NULL,
                version    INTEGER NOT NULL DEFAULT 1,
                hlc        TEXT
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        2,
        "telemetry and events",
        (
            # Monitor samples; `resolution` is the bucket width in seconds of a
            # down-sampled point (0 = raw sample).
            """CREATE TABLE telemetry (
                id         INTEGER PRIMARY KEY,
                ts         REAL    NOT NULL,
                metric     TEXT    NOT NULL,
                value      REAL    NOT NULL,
                tags       TEXT,
                resolution INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX telemetry_by_metric ON telemetry (metric, resolution, ts)",
            # Things that happened (a program exited, a key was created, ...).
            """CREATE TABLE events (
                id     INTEGER PRIMARY KEY,
                ts     REAL    NOT NULL,
                kind   TEXT    NOT NULL,
                detail TEXT
            )""",
            "CREATE INDEX events_by_kind ON events (kind, ts)",
        ),
    ),
    Migration(
        3,
        "sync: config-document stamps, tombstones, sync state; telemetry by age",
        (
            # `kv.version` at the time `kv.hlc` was stamped: a kv_set since then
            # (version moved on) is a local edit that sync must stamp and push.
            "ALTER TABLE kv ADD COLUMN hlc_version INTEGER",
            # Deleted config keys (the row leaves kv; its delete must still win
            # over stale copies elsewhere, see fieldbox.sync.configdoc).
            """CREATE TABLE kv_tombstones (
                key TEXT PRIMARY KEY,
                hlc TEXT NOT NULL
            ) WITHOUT ROWID""",
            # The sync program's own small state (its HLC, counters).
            """CREATE TABLE sync_state (
                key   TEXT PRIMARY KEY,
                value TEXT NOT NULL
            ) WITHOUT ROWID""",
            # The monitor's down-sampling scans by resolution and age across metrics.
            "CREATE INDEX telemetry_by_age ON telemetry (resolution, ts)",
        ),
    ),
)

LATEST = len(MIGRATIONS)
"""The schema version this code writes."""
MIN_READER = max((m.version for m in MIGRATIONS if m.breaking), default=1)
"""The oldest schema version whose code can still use a store this code migrated."""


def check_numbering(migrations: Sequence[Migration] = MIGRATIONS) -> None:
    """Migrations must be numbered 1, 2, 3, ... in order (a gap would skip a step)."""
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise StoreError(
                f"migration {migration.name!r} is numbered {migration.version}, expected {index}"
            )


def schema_version(conn: Any) -> int:
    """``PRAGMA user_version`` of an open connection."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _min_reader(conn: Any, current: int) -> int:
    """``schema_compat.min_reader`` of the store, or ``current`` (strict) when it has none."""
    try:
        row = conn.execute("SELECT min_reader FROM schema_compat").fetchone()
    except Exception:  # no such table (SQLCipher and sqlite3 raise their own OperationalError)
        return current
    return int(row[0]) if row and isinstance(row[0], int) else current


def migrate(
    conn: Any, label: str, target: int | None = None, migrations: Sequence[Migration] | None = None
) -> int:
    """Bring the database on ``conn`` (autocommit mode) up to ``target``; return the version reached.

    ``conn`` is any DB-API connection with ``isolation_level=None`` (SQLCipher
    or plain ``sqlite3``); driver errors propagate for the caller to translate.
    ``label`` names the database in errors. ``target`` defaults to the last
    migration; ``migrations`` to :data:`MIGRATIONS` (tests pass their own).
    """
    steps = tuple(MIGRATIONS if migrations is None else migrations)
    latest = len(steps)
    target = latest if target is None else target
    check_numbering(steps)
    # One statement, so one snapshot: another process may be migrating right now.
    current, app_id, tables = conn.execute(
        "SELECT (SELECT user_version FROM pragma_user_version), "
        "(SELECT application_id FROM pragma_application_id), (SELECT count(*) FROM sqlite_master)"
    ).fetchone()
    if current > latest and _min_reader(conn, current) <= latest:
        return int(current)  # a newer release's store, still readable by this code (rolled back)
    if current > latest:
        raise StoreError(
            f"store {label} has schema version {current}, newer than this fieldbox knows ({latest})",
            hint="update fieldbox on this device; an older version must not write to it",
        )
    if current > 0:
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"{label} is a database but not a fieldbox store (application_id {app_id:#x})",
                hint="point --db at a fieldbox store",
            )
    elif tables:
        raise StoreError(
            f"{label} is a database with tables but not a fieldbox store",
            hint="point --db at a fieldbox store",
        )
    for migration in steps[current:target]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            if schema_version(conn) < migration.version:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {migration.version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return schema_version(conn)
