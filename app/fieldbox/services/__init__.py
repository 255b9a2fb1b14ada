"""The device's supervisord programs, one small process with one job each.

=============  ====================================  ==========================================
program        entry point                           job
=============  ====================================  ==========================================
store          ``python3 -m fieldbox.services.store``      the only writer of the encrypted store;
                                                           serves ``$FIELDBOX_RUN/store.sock``
runner         ``python3 -m fieldbox.services.runner``     loads every agent; serves inference on
                                                           ``$FIELDBOX_RUN/runner.sock``
workflows      ``python3 -m fieldbox.services.workflows``  runs every workflow (triggers -> steps ->
                                                           sinks); serves ``workflows.sock``
=============  ====================================  ==========================================

They talk with :mod:`fieldbox.ipc` frames; :mod:`fieldbox.services.clients`
holds the one client of each service's requests. The programs are declared in
``rootfs-overlay/etc/supervisor/conf.d/`` (the same files on the device and
under ``fieldbox dev up``).
"""

from __future__ import annotations

from pathlib import Path

from fieldbox import paths

RUNNER_SOCKET = "runner.sock"
STORE_SOCKET = "store.sock"
WORKFLOWS_SOCKET = "workflows.sock"


def socket_path(name: str) -> Path:
    """A service socket under ``$FIELDBOX_RUN``."""
    return paths.run_dir() / name
