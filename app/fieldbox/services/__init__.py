"""The device's supervisord programs, one small process with one job each, each as its own user.

=============  ================  ===========================================================
program        user              job
=============  ================  ===========================================================
store          fieldbox-store    the only process that opens the encrypted store (and reads
                                 its key); serves ``$FIELDBOX_RUN/store/store.sock``
runner         fieldbox-runner   loads every agent, decodes inputs; serves inference on
                                 ``$FIELDBOX_RUN/runner/runner.sock``
workflows      fieldbox-flow     runs every workflow (triggers -> steps -> sinks); serves
                                 ``workflows/workflows.sock``
sync           fieldbox-sync     the network client; reaches the outbox through store.sock
monitor        fieldbox-monitor  resource samples and supervisord's events, through store.sock
=============  ================  ===========================================================

(``ota``, the update client, is a shell loop around :mod:`fieldbox.ota.agent` and runs as
root.) Entry points: ``python3 -m fieldbox.services.<program>``. The accounts and who may
use which socket: ``image/users.txt``.

They talk with :mod:`fieldbox.ipc` frames; :mod:`fieldbox.services.clients`
holds the one client of each service's requests. The programs are declared in
``rootfs-overlay/etc/supervisor/conf.d/`` (the same files on the device and
under ``fieldbox dev up``).
"""

from __future__ import annotations

from pathlib import Path

from fieldbox import paths

RUNNER_SOCKET = "runner/runner.sock"
STORE_SOCKET = "store/store.sock"
WORKFLOWS_SOCKET = "workflows/workflows.sock"
"""Each socket sits in a directory of its own service: on the device ``fieldbox-init``
creates ``$FIELDBOX_RUN/<service>/`` owned by the service's user, open (``rwx r-x ---``)
to its group only, so only that service can create the socket (no other program can
squat its name) and only members of its group can connect (``image/users.txt``)."""


def socket_path(name: str) -> Path:
    """A service socket under ``$FIELDBOX_RUN``."""
    return paths.run_dir() / name
