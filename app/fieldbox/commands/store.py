"""``fieldbox store ...``: read the encrypted store back through its key.

::

    fieldbox store query [--db PATH] [--kek PATH] [--workflow W] [--limit N] [--after-id N] [--json]
    fieldbox store info  [--db PATH] [--kek PATH] [--json]
    fieldbox store check [--db PATH] [--kek PATH]

``--db`` defaults to ``$FIELDBOX_DATA/store/fieldbox.db``; ``--kek`` to the
file key provider's ``$FIELDBOX_DATA/keys/kek``. These verbs never create a
store: a missing one is an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from fieldbox.store import FileKeyProvider, ResultRow, Store, default_db_path

_RESULT_WIDTH = 60


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``store`` verb and its sub-verbs."""
    parser = subparsers.add_parser("store", help="read the encrypted result store")
    verbs = parser.add_subparsers(dest="store_verb", metavar="SUBVERB", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--db", type=Path, default=None, help="store file (default: $FIELDBOX_DATA/store/fieldbox.db)"
        )
        p.add_argument(
            "--kek",
            type=Path,
            default=None,
            help="key-encryption key file (default: $FIELDBOX_DATA/keys/kek)",
        )

    query = verbs.add_parser("query", help="print stored results (a table, or JSON)")
    common(query)
    query.add_argument("--workflow", help="only this workflow's results")
    query.add_argument("--limit", type=int, default=20, help="at most N results (default %(default)s)")
    query.add_argument("--after-id", type=int, default=0, help="results with id > N (paging)")
    query.add_argument("--json", action="store_true", help="a JSON array of full records")
    query.set_defaults(func=cmd_query)

    info = verbs.add_parser("info", help="schema version, row counts, file sizes, key provider")
    common(info)
    info.add_argument("--json", action="store_true", help="as JSON")
    info.set_defaults(func=cmd_info)

    check = verbs.add_parser("check", help="verify every page's HMAC and the database structure")
    common(check)
    check.set_defaults(func=cmd_check)


def become_owner(directory: Path) -> None:
    """Run as the owner of ``directory`` when started as root and it is someone else's.

    On the device the store belongs to ``fieldbox-store``: a root process that
    opened it would leave root-owned ``-wal``/``-shm`` files behind after a crash,
    which the store writer could then not open. This process is short-lived, so it
    gives up root for good before it touches the database.
    """
    if os.geteuid() != 0:
        return
    try:
        st = directory.stat()
    except OSError:
        return
    if st.st_uid != 0:
        os.setgroups([])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)


def _open(args: argparse.Namespace) -> Store:
    db: Path = args.db if args.db is not None else default_db_path()
    keys = FileKeyProvider(args.kek) if args.kek is not None else FileKeyProvider()
    become_owner(db.parent)
    return Store.open(db, keys, create=False)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[ResultRow]) -> str:
    header = ("id", "created (UTC)", "workflow", "agent", "item", "prio", "result")
    cells = []
    for r in rows:
        text = json.dumps(r.result, separators=(",", ":"), ensure_ascii=False)
        if len(text) > _RESULT_WIDTH:
            text = text[: _RESULT_WIDTH - 1] + "…"
        cells.append((str(r.id), _when(r.created_at), r.workflow, r.agent, r.item, str(r.priority), text))
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def cmd_query(args: argparse.Namespace) -> int:
    """``fieldbox store query``."""
    with _open(args) as store:
        rows = store.results(workflow=args.workflow, limit=args.limit, after_id=args.after_id)
        if args.json:
            json.dump([r.to_json() for r in rows], sys.stdout, ensure_ascii=False)
            sys.stdout.write("\n")
            return 0
        total = store.count_results(args.workflow)
    print(_table(rows))
    shown = f"{len(rows)} of {total} result(s)" + (f" in workflow {args.workflow!r}" if args.workflow else "")
    if rows and len(rows) < total:
        shown += f"; next page: --after-id {rows[-1].id}"
    print(shown, file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``fieldbox store info``."""
    with _open(args) as store:
        info = store.info()
    if args.json:
        print(json.dumps(info.to_json(), indent=1))
        return 0
    print(f"store           {info.path}")
    print(f"schema version  {info.schema_version} (this fieldbox: {info.code_schema_version})")
    print(f"cipher          SQLCipher {info.cipher_version}, {info.page_size}-byte pages")
    print(f"key provider    {info.key_provider}")
    for table, count in info.counts.items():
        print(f"{table:<15} {count:,} row(s)")
    for name, size in info.file_sizes.items():
        print(f"{name:<15} {size:,} bytes")
    if info.key_warning:
        print(f"key caveat      {info.key_warning}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``fieldbox store check``: raises StoreError (exit 1) on damage."""
    with _open(args) as store:
        store.check()
        print(f"{store.path}: ok ({store.count_results()} results, every page authenticated)")
    return 0
