"""``fieldbox serve``: a development ingest server for sync batches and config documents.

:mod:`.ingestdb` keeps received records idempotently in SQLite;
:mod:`.server` is the HTTP(S) API. Both speak the device's own wire formats
(:mod:`fieldbox.sync.batch`, :mod:`fieldbox.sync.configdoc`), imported, never
re-implemented. See ``README.md`` beside this file.
"""

from fieldbox_host.serve.ingestdb import DeviceSummary, IngestDB
from fieldbox_host.serve.server import IngestServer, TLSFiles

__all__ = ["DeviceSummary", "IngestDB", "IngestServer", "TLSFiles"]
