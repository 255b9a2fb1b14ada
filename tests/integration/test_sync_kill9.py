"""The real sync program (``python -m fieldbox.services.sync``) killed with SIGKILL 50 times mid-send.

As on the device, it reaches the outbox through the real store writer
(``python -m fieldbox.services.store``), which runs throughout; results keep
arriving from another connection to the same database meanwhile.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sync_support import FaultProxy, open_store, put_results, running_server

from fieldbox.sync import outbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INITIAL = 2000
PER_RESTART = 60  # new results between kills, as the workflows keep producing
KILLS = 50
N = INITIAL + KILLS * PER_RESTART


def _write_config(etc: Path, url: str) -> None:
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "sync.toml").write_text(
        f'server_url = "{url}"\n'
        'device_id = "dev-kill"\n'
        "batch_max_records = 10\n"  # many small batches: many moments to be killed in
        "idle_s = 0.05\n"
        "timeout_s = 5.0\n"
        "[backoff]\nbase_s = 0.02\ncap_s = 0.2\n"
    )


def test_kill_dash_nine_fifty_times_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = open_store(data)
    put_results(store, INITIAL, priorities=[0, 3, 6, 9])
    store.close()
    server_db = tmp_path / "server.sqlite"
    rng = random.Random(2024)
    env = {
        **os.environ,
        "FIELDBOX_DATA": str(data),
        "FIELDBOX_ETC": str(tmp_path / "etc"),
        "FIELDBOX_RUN": str(tmp_path / "run"),
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "sync.log").open("wb")
    writer = subprocess.Popen(
        [sys.executable, "-m", "fieldbox.services.store"], env=env, stdout=log, stderr=log
    )
    socket = tmp_path / "run" / "store" / "store.sock"
    started = time.monotonic()
    while not socket.exists() and writer.poll() is None and time.monotonic() - started < 60:
        time.sleep(0.05)
    assert socket.exists(), "the store writer did not start"
    with running_server(server_db) as server:
        # Every request is held 30 ms on the way in, so a send is always in flight somewhere.
        proxy = FaultProxy(server.server_address[1], p_reset=0.0, p_truncate=0.0, p_delay=1.0, delay_s=0.03)
        _write_config(tmp_path / "etc", proxy.url)
        kills = 0
        progress: list[int] = []
        deadline = time.monotonic() + 240
        while kills < KILLS and time.monotonic() < deadline:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fieldbox.services.sync"], env=env, stdout=log, stderr=log
            )
            # Python start-up + imports take ~0.4-0.8 s here; kill somewhere around the first batches.
            time.sleep(rng.uniform(0.3, 1.1))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            progress.append(len(server.db.records()))
            store = open_store(data)
            put_results(store, PER_RESTART, priorities=[1, 7], prefix=f"more{kills:02d}")
            store.close()
        # Finally let it run to the end.
        proc = subprocess.Popen(
            [sys.executable, "-m", "fieldbox.services.sync"], env=env, stdout=log, stderr=log
        )
        try:
            while time.monotonic() < deadline + 60:
                if len(server.db.records()) >= N:
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # let it delete the last acknowledged batch
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            writer.send_signal(signal.SIGTERM)
            writer.wait(timeout=30)
            proxy.close()
        rows = server.db.records()
        devices = {d.device: d for d in server.db.devices()}
    log.close()
    assert kills == KILLS
    ids = [r[2] for r in rows]
    assert len(ids) == N, f"{N - len(ids)} records lost"
    assert len(set(ids)) == N
    expected = {f"results/img-{i:06d}" for i in range(INITIAL)} | {
        f"results/more{k:02d}-{i:06d}" for k in range(1, KILLS + 1) for i in range(PER_RESTART)
    }
    assert set(ids) == expected
    # The kills really hit mid-run: progress was made between kills, and the server saw repeats
    # (batches committed on the server but not yet deleted on the device when the kill came).
    assert len(set(progress)) > KILLS // 2, progress
    assert devices["dev-kill"].duplicates > 0
    store = open_store(data)
    try:
        assert outbox.totals(store)[0] == 0
    finally:
        store.close()
