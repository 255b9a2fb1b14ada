"""Store-and-forward sync: the batch wire format, the client, backoff and config documents.

``batch`` is the one definition of the bytes between a device and an ingest
server (the host's dev server imports it too); ``hlc`` and ``configdoc`` define
how config documents merge; ``client`` drains the store's outbox.
"""
