"""The one exception tree of the device package.

Every error says what failed and, where it can, what to do about it::

    FieldboxError                 base; ``str()`` is the one line a CLI prints
    ├── ConfigError               a manifest, workflow or config file is wrong
    ├── ModelError                a model file is missing, corrupt or does not match
    ├── InputError                an input item cannot be used (truncated image, wrong shape)
    ├── StoreError                the encrypted store cannot be opened or written
    │   ├── WrongKeyError         the key does not open this database
    │   └── StoreFullError        the disk under the store is full
    ├── DependencyError           a runtime library the feature needs is not installed
    ├── ServiceError              a local service (runner, store writer, workflows) failed
    │   ├── ServiceUnavailableError   the service is not running (its socket refuses)
    │   ├── BusyError             the service's queue is full: nothing was taken, retry later
    │   └── ProtocolError         a malformed frame or request on a local socket
    ├── SyncError                 store-and-forward sync failed (server, network, config doc)
    │   ├── BatchFormatError      a sync batch's bytes are malformed or exceed a limit
    │   └── ClockSkewError        a config-document timestamp lies too far in the future
    ├── BootStateError            the A/B slot state on the boot partition cannot be read or written
    └── UpdateError               an over-the-air update could not be checked, fetched or installed
        ├── BundleError           an update bundle's bytes are malformed or fail their checksums
        └── UpdateRefusedError    a release is refused: metadata fails verification, wrong board, downgrade
"""

from __future__ import annotations


class FieldboxError(Exception):
    """Base of every error fieldbox raises on purpose.

    ``message`` says what went wrong; ``hint`` (optional) says what to do.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(FieldboxError):
    """A declarative file (agent manifest, workflow, config) is invalid."""


class ModelError(FieldboxError):
    """A model cannot be loaded or does not match what its manifest declares."""


class InputError(FieldboxError):
    """One input item cannot be processed; the caller records it and carries on."""


class StoreError(FieldboxError):
    """The encrypted store failed."""


class WrongKeyError(StoreError):
    """The database key does not open the database (or the file is not a database)."""


class StoreFullError(StoreError):
    """The filesystem holding the store has no space left."""


class DependencyError(FieldboxError):
    """A library needed for this feature is not installed."""


class ServiceError(FieldboxError):
    """A local service (runner, store writer, workflows) failed to handle a request."""


class ServiceUnavailableError(ServiceError):
    """A local service is not running or its socket cannot be reached; retry with backoff."""


class AgentUnavailableError(ServiceUnavailableError):
    """The runner could not load an agent (model or manifest); items wait for a fixed one."""


class BusyError(ServiceError):
    """A service's bounded queue is full; the request was not taken and may be retried."""


class ProtocolError(ServiceError):
    """A frame or request on a local socket is malformed (see :mod:`fieldbox.ipc`)."""


class SyncError(FieldboxError):
    """Store-and-forward sync failed: the server refused, or the link is down."""


class BatchFormatError(SyncError):
    """A sync batch (or its acknowledgement) is malformed or exceeds a size limit."""


class ClockSkewError(SyncError):
    """A config-document timestamp is further ahead of local time than allowed."""


class BootStateError(FieldboxError):
    """The A/B slot state (``fbstate.0``/``fbstate.1`` on the boot partition) cannot be used."""


class UpdateError(FieldboxError):
    """An over-the-air update could not be checked, downloaded or installed; the running slot is untouched."""


class BundleError(UpdateError):
    """An update bundle (manifest or chunk) is malformed, exceeds a limit, or fails its sha256."""


class UpdateRefusedError(UpdateError):
    """A release was refused on purpose: its metadata failed TUF verification, or it is for another
    board, older than what is installed, or below the fleet's minimum version."""
