"""The /data budget on a booted image with a 256 MiB data partition: a simulated week of photos,
a full card in the middle of it, and every eviction counted.

The image is the debug build with a test overlay that scales the budget down
(``budget.toml``: prune every 3 s, keep 10 synced results for 1.5 days, 4 KiB
of failed inputs; ``sync.toml``: 12 outbox rows, no server) so that a few dozen
items under TCG cross every rule a real device crosses in months. It needs the
debug shell for three things a user's tools do not do over a console: it plays
the camera (writes photos into ``/data/inbox``), the clock (sets the date one
day forward per simulated day) and the rest of the card (a ballast file that
takes the free space under the reserve). Everything it checks it reads as the
services left it: the store is read on the host from the disk after the power
is cut.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import diskread
import pytest
from PIL import Image

from fieldbox.store import FileKeyProvider, Store
from fieldbox_host.image.build import BuildOptions, BuildResult, build_image
from fieldbox_host.photos import variants
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
MiB = 1024 * 1024
DAY = 86400
DAYS = 7
PER_DAY = 5
FULL_DAY = 3
"""The day the card fills up (the ballast), before that day's photos arrive."""
KEEP_SYNCED_ROWS = 10
OUTBOX_ROWS = 12
FAILED_MAX_BYTES = 4096
WORKFLOW = "face-inbox"

BUDGET_TOML = f"""\
# test: the shipped rule, scaled down so that a simulated week crosses every limit
prune_interval_s = 3.0
[results]
keep_synced_s = {1.5 * DAY}
max_synced_rows = {KEEP_SYNCED_ROWS}
[inbox]
failed_max_bytes = {FAILED_MAX_BYTES}
failed_max_age_s = {2.5 * DAY}
"""


@pytest.fixture(scope="module")
def budget_image(tmp_path_factory: pytest.TempPathFactory, fieldbox_image: BuildResult) -> BuildResult:
    """The debug image with the scaled-down budget (built from the same cached root filesystem)."""
    work = tmp_path_factory.mktemp("budget")
    etc = work / "overlay" / "etc" / "fieldbox"
    etc.mkdir(parents=True)
    (etc / "budget.toml").write_text(BUDGET_TOML)
    sync = (ROOT / "rootfs-overlay/etc/fieldbox/sync.toml").read_text()
    assert "max_rows = 200000" in sync and "idle_s = 5.0" in sync
    (etc / "sync.toml").write_text(
        sync.replace("max_rows = 200000", f"max_rows = {OUTBOX_ROWS}").replace("idle_s = 5.0", "idle_s = 2.0")
    )
    result = build_image(
        BuildOptions(build_dir=BUILD, output_dir=work / "images", debug_shell=True, overlay=work / "overlay",
                     compress=False)
    )  # fmt: skip
    assert result.image is not None
    return result


def small_photos(n: int, seed: int) -> list[tuple[str, bytes]]:
    """Distinct real photographs, made small (a few KiB) so the serial console carries them fast."""
    out = []
    for name, data in variants(BUILD / "assets", n, seed=seed):
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((128, 128))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
        out.append((name.rsplit(".", 1)[0] + ".jpg", buf.getvalue()))
    return out


def wait_until(machine: Machine, command: str, predicate: Callable[[str], bool], timeout: float,
               what: str) -> str:  # fmt: skip
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = machine.run(command, timeout=120)
        last = result.output
        if result.rc == 0 and predicate(last):
            return last
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last output:\n{last[-1500:]}")


def files_in(machine: Machine, *directories: str) -> int:
    out = machine.run(f"find {' '.join(directories)} -type f | wc -l").check()
    return int(out.strip().splitlines()[-1])


def pending(machine: Machine) -> int:
    """Inputs not finished: a file leaves inbox/ and processing/ only once its results are committed."""
    return files_in(machine, "/data/inbox", f"/data/processing/{WORKFLOW}")


def wait_processed(machine: Machine, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (left := pending(machine)) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert left == 0, f"{left} input(s) still pending after {timeout:.0f} s waiting for {what}"


def status(machine: Machine) -> dict[str, object]:
    out = machine.run("fieldbox workflow status --json", timeout=120).check("workflow status")
    doc: dict[str, object] = json.loads(out[out.index("{"):])
    workflows = doc["workflows"]
    assert isinstance(workflows, dict)
    state: dict[str, object] = workflows[WORKFLOW]
    return state


def data_df(machine: Machine) -> tuple[int, int]:
    """(size, bytes available to the services) of /data, as df reports them."""
    out = machine.run("df -B1 --output=size,avail /data | tail -n 1").check()
    size, avail = (int(v) for v in out.split())
    return size, avail


def test_a_simulated_week_stays_in_budget_pauses_on_a_full_card_and_counts_every_eviction(
    budget_image: BuildResult, tmp_path: Path, record_property: Callable[..., None]
) -> None:
    assert budget_image.image is not None
    machine = Machine(budget_image.image, tmp_path / "vm", grow_mib=192)  # p4: 64 + 192 = 256 MiB
    try:
        machine.start()
        machine.wait_ready()
        size, _ = data_df(machine)
        assert 200 * MiB < size <= 256 * MiB, size
        start = int(machine.run("date +%s").check().strip())
        photos = small_photos(DAYS * PER_DAY + 3, seed=11)
        sent = 0
        rows: list[tuple[int, int, int, int]] = []  # day, avail, store bytes, failed bytes
        paused_reason = busy = ""
        for day in range(DAYS):
            machine.run(f"date -s @{start + day * DAY} >/dev/null").check("set the clock")
            if day == FULL_DAY:
                _, avail = data_df(machine)
                machine.run(f"fallocate -l {avail - 16 * MiB} /data/ballast").check("ballast")
                paused = wait_until(machine, "fieldbox workflow status --json",
                                    lambda out: '"paused": "/data' in out, 60, "intake paused")  # fmt: skip
                paused_reason = str(json.loads(paused[paused.index("{"):])["workflows"][WORKFLOW]["paused"])
                held = photos[sent : sent + 3]
                for name, data in held:
                    machine.put_file(data, f"/data/inbox/{name}")
                sent += len(held)
                machine.put_file(photos[-1][1], "/tmp/submit.jpg")
                submit = machine.run(f"fieldbox workflow submit {WORKFLOW} /tmp/submit.jpg; echo rc=$?")
                busy = submit.output
                time.sleep(10)  # well past the settle time and poll: nothing may be taken
                assert pending(machine) == len(held), "a paused workflow took an item"
                machine.run("rm /data/ballast").check()
                wait_processed(machine, 300, "intake to resume by itself")
            for name, data in photos[sent : sent + PER_DAY]:
                machine.put_file(data, f"/data/inbox/{name}")
            sent += PER_DAY
            machine.put_file(f"day {day}: not a photo\n".encode() * 40, f"/data/inbox/day{day}-notes.jpg")
            wait_processed(machine, 600, f"day {day}'s items")
            time.sleep(4)  # one prune interval of the store writer and the inbox watcher
            du = machine.run("du -sb /data/store /data/failed").check()
            store_b, failed_b = (int(line.split()[0]) for line in du.splitlines()[-2:])
            rows.append((day, data_df(machine)[1], store_b, failed_b))
        final = status(machine)
        leftovers = files_in(machine, "/data/done", "/data/inbox")
        machine.run("sync").check()
    finally:
        machine.kill()

    print("\nday  /data free MiB  store KiB  failed/ bytes", file=sys.stderr)
    for day, avail, store_b, failed_b in rows:
        print(f"{day:>3}  {avail / MiB:>14.1f}  {store_b / 1024:>9.0f}  {failed_b:>13}", file=sys.stderr)
    record_property("data_budget_days", rows)

    # The full card: a reason that says what and how much, a busy answer with it, resumed by itself.
    assert "MiB free, under the 32 MiB reserve" in paused_reason, paused_reason
    assert "is paused" in busy and "rc=75" in busy, busy
    assert final["paused"] == "" and final["failed"] == DAYS and final["done"] == sent
    # No plaintext copies; failed/ held to its budget (reasons included).
    assert leftovers == 0
    assert all(failed_b <= FAILED_MAX_BYTES + 4096 for *_, failed_b in rows), rows  # + du's directory block
    # Outside the full-card day the card never came near the reserve (32 MiB of ~250).
    assert all(avail > 150 * MiB for _, avail, *_ in rows), rows

    # What the store says, read from the disk as the device left it.
    fs = diskread.partition(machine.overlay, 4, tmp_path / "disk")
    copy = tmp_path / "data"
    for directory in ("store", "keys"):
        (copy / directory).mkdir(parents=True)
        for name in diskread.ls(fs, f"/{directory}"):
            (copy / directory / name).write_bytes(diskread.cat(fs, f"/{directory}/{name}"))
    keys = FileKeyProvider(copy / "keys" / "kek")
    with Store.open(copy / "store" / "fieldbox.db", keys, create=False) as s:
        (kept,) = s.query("SELECT count(*) FROM results WHERE workflow = ?", (WORKFLOW,))[0]
        (queued,) = s.query("SELECT count(*) FROM outbox WHERE topic = 'results'")[0]
        details = [(k, json.loads(d)) for k, d in s.query("SELECT kind, detail FROM events")]
    kinds = {k for k, _ in details}
    pruned = sum(d["results"] for k, d in details if k == "store.pruned")
    evicted = sum(n for k, d in details if k == "sync.evicted"
                  for rp, n in d["by_reason_priority"].items() if rp.endswith("/2"))  # fmt: skip
    print(f"results: {sent} made, {kept} kept ({queued} unsynced), {int(evicted)} evicted from the outbox, "
          f"{int(pruned)} pruned", file=sys.stderr)  # fmt: skip
    # Every result is accounted for: kept, or pruned and counted; every outbox record is
    # queued, or evicted and counted (there is no server: nothing was acknowledged).
    assert kept + pruned == sent, (kept, pruned, sent)
    assert queued + evicted == sent, (queued, evicted, sent)
    assert queued <= OUTBOX_ROWS and kept - queued <= KEEP_SYNCED_ROWS
    assert {"store.pruned", "sync.evicted", "workflow.paused", "workflow.resumed"} <= kinds, kinds
