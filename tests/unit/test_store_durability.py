"""A full disk and a killed writer: every acknowledged result survives, nothing half-written appears.

* Disk full is real: the child process runs in its own mount namespace
  (``unshare --mount --map-root-user``, no root needed where unprivileged user
  namespaces are allowed) on a 2 MiB tmpfs, so SQLite gets a genuine ENOSPC.
  The mount disappears with the process. If the namespace or the mount cannot
  be made, the test fails and says why; it is not skipped.
* Crash: a child commits results in a loop and prints each key only after the
  commit returned; it is ``kill -9``-ed at a random moment, ten times, and
  every printed (acknowledged) key must be in the store afterwards. This is a
  process crash; a power cut (the page cache lost too) is what
  ``synchronous=FULL`` covers and what the system tests show under QEMU.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from fieldbox.store import FileKeyProvider, Store

DISK_FULL_CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path

    mnt = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)

    from fieldbox.errors import StoreError, StoreFullError
    from fieldbox.store import FileKeyProvider, ResultIn, Store

    report = {}
    db, keys = mnt / "store" / "fieldbox.db", FileKeyProvider(mnt / "keys" / "kek")
    store = Store.open(db, keys)
    (mnt / "filler").write_bytes(b"\\0" * 256 * 1024)  # freed later, to make room again
    acked, failed, i = [], None, 0
    while i < 200_000:
        pads = [os.urandom(100).hex() for _ in range(20)]
        batch = [ResultIn(f"r{i + j:06d}", "wf", "agent", "item", {"pad": pad}) for j, pad in enumerate(pads)]
        try:
            store.put_results(batch)
        except StoreFullError as exc:
            failed, report["error"], report["hint"] = batch, exc.message, exc.hint
            break
        acked += [r.key for r in batch]
        i += 20
    report["acked"] = len(acked)
    report["failed_keys_present"] = sum(store.has_result(r.key) for r in failed or [])
    report["count_after_error"] = store.count_results()
    report["outbox_after_error"] = store.query("SELECT count(*) FROM outbox")[0][0]
    try:
        store.put_result("single-while-full", "wf", "agent", "item", {"pad": "x" * 4000})
        report["single_while_full"] = "stored"
    except StoreFullError:
        report["single_while_full"] = "full"
    (mnt / "filler").unlink()
    report["retry_after_freeing"] = store.put_results(failed)
    store.close()
    with Store.open(db, keys) as again:
        report["count_reopened"] = again.count_results()
        report["outbox_reopened"] = again.query("SELECT count(*) FROM outbox")[0][0]
        report["all_acked_present"] = all(again.has_result(k) for k in acked)
        again.check()
    # A new store on a completely full disk: a clear error, nothing half-made.
    with open(mnt / "ballast", "wb") as fh:
        try:
            while True:
                fh.write(b"\\0" * 65536)
                fh.flush()
        except OSError:
            pass
    try:
        Store.open(mnt / "other" / "fieldbox.db", FileKeyProvider(mnt / "keys2" / "kek"))
        report["create_on_full_disk"] = "created"
    except StoreFullError as exc:
        report["create_on_full_disk"] = "StoreFullError: " + exc.message
    except StoreError as exc:
        report["create_on_full_disk"] = "StoreError: " + exc.message
    print(json.dumps(report))
    """
)


def test_disk_full_is_a_clear_error_and_loses_nothing_committed(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "this test needs util-linux `unshare` to give the child its own small filesystem"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        [unshare, "--mount", "--map-root-user", sys.executable, "-c", DISK_FULL_CHILD, str(mnt)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"child failed (cannot make a private tmpfs here?):\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["acked"] > 500  # the disk really filled up with results first
    assert "disk full while storing results" in report["error"]
    assert "committed data is intact" in report["error"]
    assert "free space" in report["hint"]
    assert report["failed_keys_present"] == 0  # the failed batch was rolled back whole
    assert report["count_after_error"] == report["outbox_after_error"] == report["acked"]
    assert report["single_while_full"] in ("stored", "full")
    assert report["retry_after_freeing"] == [True] * 20
    extra = 1 if report["single_while_full"] == "stored" else 0
    assert report["count_reopened"] == report["outbox_reopened"] == report["acked"] + 20 + extra
    assert report["all_acked_present"] is True
    assert report["create_on_full_disk"].startswith("StoreFullError: disk full")
    assert not list(mnt.iterdir())  # the tmpfs was private to the child


CRASH_CHILD = textwrap.dedent(
    """
    import random, sys
    from pathlib import Path
    from fieldbox.store import FileKeyProvider, ResultIn, Store

    db, kek, prefix, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rng = random.Random(seed)
    store = Store.open(db, FileKeyProvider(kek))
    i = 0
    while True:
        if rng.random() < 0.5:
            key = f"{prefix}-{i:06d}"
            prio = rng.randrange(10)
            store.put_result(key, "wf", "agent", "item", {"i": i, "pad": "p" * 150}, priority=prio)
            print(key, flush=True)
            i += 1
        else:
            batch = [ResultIn(f"{prefix}-{n:06d}", "wf", "agent", "item", {"i": n}) for n in range(i, i + 50)]
            store.put_results(batch)
            print("\\n".join(r.key for r in batch), flush=True)
            i += 50
    """
)


def test_kill_9_mid_stream_loses_no_acknowledged_result(tmp_path: Path) -> None:
    db, kek = tmp_path / "store" / "fieldbox.db", tmp_path / "keys" / "kek"
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    acknowledged: set[str] = set()
    for run in range(10):
        out_path = tmp_path / f"acks-{run}.txt"
        with open(out_path, "w") as out:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CRASH_CHILD,
                    str(db),
                    str(kek),
                    f"run{run}",
                    str(rng.randrange(1 << 30)),
                ],
                stdout=out,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 60
            while out_path.stat().st_size == 0:  # wait for the first acknowledged commit
                assert child.poll() is None, child.stderr.read() if child.stderr else ""
                assert time.monotonic() < deadline, "child never committed"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.02, 0.5))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            assert child.returncode == -signal.SIGKILL
        text = out_path.read_text()
        lines = text.split("\n")[:-1]  # a partial last line (killed mid-print) does not count
        assert lines, "nothing acknowledged before the kill"
        acknowledged.update(lines)
        with Store.open(db, FileKeyProvider(kek)) as store:
            missing = [k for k in lines if not store.has_result(k)]
            assert not missing, f"run {run}: {len(missing)} acknowledged results lost, e.g. {missing[:3]}"
            # Results and their outbox rows commit together or not at all.
            total = store.count_results()
            assert store.query("SELECT count(*) FROM outbox")[0][0] == total
            # At most the one transaction in flight at the kill is stored but unacknowledged.
            assert len(acknowledged) <= total <= len(acknowledged) + 50 * (run + 1)
    with Store.open(db, FileKeyProvider(kek)) as store:
        assert all(store.has_result(k) for k in acknowledged)
        store.check()
