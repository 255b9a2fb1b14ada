"""The ``sync`` program: drain the store's outbox to the ingest server and exchange the config document.

Configuration: ``$FIELDBOX_ETC/sync.toml`` (:class:`fieldbox.sync.config.SyncConfig`).
With no ``server_url`` it still enforces the outbox bounds, so a device that is
never connected does not fill its card. The protocol, guarantees and eviction
rule are in :mod:`fieldbox.sync.client` and :mod:`fieldbox.sync.outbox`.

It never opens the database and holds no key: it is the process that talks to
the network, so it runs as its own unprivileged user and reads the outbox,
deletes what the server acknowledged, applies the eviction rule and merges the
config document through the store writer's socket
(:class:`fieldbox.sync.access.StoreSocketAccess`). While the store writer is
down it waits and retries; nothing is lost, since records leave the outbox
only on an acknowledgement.
"""

from __future__ import annotations

import logging
import sys
import threading

from fieldbox import ipc
from fieldbox.services import STORE_SOCKET, socket_path
from fieldbox.services.common import EXIT_OK, run_service
from fieldbox.sync.access import StoreSocketAccess
from fieldbox.sync.client import SyncClient, describe
from fieldbox.sync.config import load_config

STORE_TIMEOUT_S = 60.0
"""How long one request to the store writer may take (an eviction of many rows is one transaction)."""


def main_body(log: logging.Logger, stop: threading.Event) -> int:
    """Load the config, run the sync loop through the store writer until stopped."""
    config = load_config()
    store = ipc.Client(socket_path(STORE_SOCKET), timeout=STORE_TIMEOUT_S, name="store")
    try:
        client = SyncClient(StoreSocketAccess(store), config)
        client.run(stop)
        log.info("sync stopped: %s", describe(client.stats))
    finally:
        store.close()
    return EXIT_OK


def main() -> int:
    """Entry point: ``python3 -m fieldbox.services.sync``."""
    return run_service("sync", main_body)


if __name__ == "__main__":
    sys.exit(main())
