"""The encrypted store (SQLCipher 4): results, sync outbox, telemetry, events, config.

Public API::

    from fieldbox.store import Store, FileKeyProvider, KeyProvider, default_db_path

    with Store.open(default_db_path()) as store:          # creates, keys and migrates on first use
        store.put_result("img-0001", "faces", "blazeface", "inbox/0001.jpg", {"faces": 1}, priority=2)
        store.results(workflow="faces", limit=10)

See :mod:`fieldbox.store.store` for the guarantees (durability, thread safety),
:mod:`fieldbox.store.keys` for key management and the provider interface, and
:mod:`fieldbox.store.migrations` for the schema.
"""

from fieldbox.store.keys import FileKeyProvider, KeyProvider
from fieldbox.store.migrations import LATEST as SCHEMA_VERSION
from fieldbox.store.records import EventRow, ResultIn, ResultRow, StoreInfo, TelemetryPoint
from fieldbox.store.store import RESULTS_TOPIC, Store, default_db_path

__all__ = [
    "RESULTS_TOPIC",
    "SCHEMA_VERSION",
    "EventRow",
    "FileKeyProvider",
    "KeyProvider",
    "ResultIn",
    "ResultRow",
    "Store",
    "StoreInfo",
    "TelemetryPoint",
    "default_db_path",
]
