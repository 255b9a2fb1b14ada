"""The ``sync`` program: drain the store's outbox to the ingest server and exchange the config document.

Configuration: ``$FIELDBOX_ETC/sync.toml`` (:class:`fieldbox.sync.config.SyncConfig`).
With no ``server_url`` it still enforces the outbox bounds, so a device that is
never connected does not fill its card. The protocol, guarantees and eviction
rule are in :mod:`fieldbox.sync.client` and :mod:`fieldbox.sync.outbox`.

It opens the same SQLCipher file as the ``store`` program (WAL: its reads never
block the writer; its own writes — deleting acknowledged records, evictions,
config — are short transactions that queue on SQLite's write lock with a busy
timeout).
"""

from __future__ import annotations

import logging
import sys
import threading

from fieldbox.services.common import EXIT_OK, run_service
from fieldbox.store import Store, default_db_path
from fieldbox.sync.client import SyncClient, describe
from fieldbox.sync.config import load_config


def main_body(log: logging.Logger, stop: threading.Event) -> int:
    """Load the config, open the store, run the sync loop until stopped."""
    config = load_config()
    with Store.open(default_db_path()) as store:
        client = SyncClient(store, config)
        client.run(stop)
        log.info("sync stopped: %s", describe(client.stats))
    return EXIT_OK


def main() -> int:
    """Entry point: ``python3 -m fieldbox.services.sync``."""
    return run_service("sync", main_body)


if __name__ == "__main__":
    sys.exit(main())
