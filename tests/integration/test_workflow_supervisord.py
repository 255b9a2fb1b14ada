"""The device's services under the real supervisord on this host, with the image's own config.

200 real photographs (distinct crops/flips/resizes of build/assets, JPEG and PNG,
written as name.tmp then renamed) go into the inbox; every result must be in the
encrypted store exactly once, the inbox empty and no plaintext copy left behind
(done/ empty: the image's budget.toml keeps none) — also when a program is killed
with SIGKILL half way (supervisord restarts it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldbox.store import FileKeyProvider, Store
from fieldbox.workflows.engine import FAILED_EVENT
from fieldbox.workflows.items import result_keys
from fieldbox_host.devstack import DevStack
from fieldbox_host.photos import drop, variants

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "build" / "assets"
WORKFLOW = "face-inbox"
N = 200

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, stack: DevStack) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = (stack.log_dir / "workflows.log").read_text()[-3000:]
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; workflows.log ends:\n{tail}")


def count(directory: Path) -> int:
    return len(os.listdir(directory)) if directory.exists() else 0


def left(stack: DevStack) -> int:
    """Inputs not finished yet: an input leaves inbox/ and processing/ only after its results commit."""
    return count(stack.inbox) + count(stack.data / "processing" / WORKFLOW)


def open_store(stack: DevStack) -> Store:
    """Read the store the way `fieldbox store query` does: through the key, never creating it."""
    return Store.open(
        stack.data / "store" / "fieldbox.db", keys=FileKeyProvider(stack.data / "keys" / "kek"), create=False
    )


def assert_exactly_once(stack: DevStack, items: list[tuple[str, bytes]]) -> None:
    expected = {k for name, data in items for k in result_keys(WORKFLOW, name, data, 1)}
    with open_store(stack) as store:
        assert store.count_results(WORKFLOW) == len(items)
        keys: list[str] = []
        after = 0
        while page := store.results(WORKFLOW, limit=500, after_id=after):
            keys += [r.key for r in page]
            after = page[-1].id
        assert all(r.priority == 2 for r in page or [])
    assert len(keys) == len(set(keys)) == len(items)
    assert set(keys) == expected
    assert count(stack.data / "done") == 0
    assert os.listdir(stack.inbox) == []
    assert os.listdir(stack.data / "processing" / WORKFLOW) == []
    assert count(stack.data / "failed") == 0


def cli(stack: DevStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("fieldbox")), *args],
        env=stack.env(), capture_output=True, text=True, timeout=60, check=False,
    )


def test_200_images_each_stored_exactly_once(devstack: DevStack):
    items = list(variants(ASSETS, N, seed=1))
    assert len({data for _, data in items}) == N
    for name, data in items:
        drop(devstack.inbox, name, data)
    wait_for(lambda: left(devstack) == 0, 180, "all 200 files processed", devstack)
    assert_exactly_once(devstack, items)
    # the image's supervisorctl section works against this supervisord
    ctl = subprocess.run(
        [str(Path(sys.executable).with_name("supervisorctl")), "-c", str(devstack.conf), "status"],
        env=devstack.env(), capture_output=True, text=True, timeout=30, check=False,
    )
    assert ctl.returncode == 0, ctl.stdout + ctl.stderr
    running = {line.split()[0] for line in ctl.stdout.splitlines() if "RUNNING" in line}
    assert {"runner", "store", "workflows"} <= running, ctl.stdout
    status = cli(devstack, "workflow", "status", "--json")
    assert status.returncode == 0, status.stderr
    counters = json.loads(status.stdout)["workflows"][WORKFLOW]
    assert counters["done"] == N and counters["failed"] == 0
    # one more through the socket trigger, and the same one again: stored once
    name, data = next(iter(variants(ASSETS, 1, seed=99)))
    path = devstack.data / name
    path.write_bytes(data)
    first = cli(devstack, "workflow", "submit", WORKFLOW, str(path), "--json")
    again = cli(devstack, "workflow", "submit", WORKFLOW, str(path), "--json")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert json.loads(first.stdout)["stored"] == 1 and json.loads(again.stdout)["duplicate"] is True
    with open_store(devstack) as store:
        assert store.count_results(WORKFLOW) == N + 1
    # the runner serves every shipped agent, and has timed the detector's runs
    agents = cli(devstack, "agent", "status", "--json")
    assert agents.returncode == 0, agents.stdout + agents.stderr
    served = json.loads(agents.stdout)
    assert served["broken"] == {}
    shipped = {p.stem for p in (REPO / "rootfs-overlay/etc/fieldbox/agents").glob("*.toml")}
    assert set(served["agents"]) == shipped
    assert served["agents"]["face-detector"]["count"] >= N


@pytest.mark.parametrize("program", ["runner", "workflows", "store"])
def test_kill_9_midway_still_exactly_once(devstack: DevStack, program: str):
    items = list(variants(ASSETS, N, seed=2))
    for name, data in items[: N // 2]:
        drop(devstack.inbox, name, data)
    wait_for(lambda: N // 2 - left(devstack) >= 30, 120, "30 files done before the kill", devstack)
    victim = devstack.pid(program)
    os.kill(victim, signal.SIGKILL)
    killed_at = N // 2 - left(devstack)
    for name, data in items[N // 2 :]:
        drop(devstack.inbox, name, data)
    assert killed_at < N, "the kill came too late to test anything"
    new_pids = devstack.wait_running([program], timeout=60, not_pids=[victim])
    assert new_pids[program] != victim
    wait_for(lambda: left(devstack) == 0, 180, f"all {N} done after killing {program}", devstack)
    assert_exactly_once(devstack, items)
    log = (devstack.log_dir / "supervisord.log").read_text()
    assert f"exited: {program} (terminated by SIGKILL" in log


def test_bad_items_go_to_failed_with_reasons(devstack: DevStack):
    good = list(variants(ASSETS, 20, seed=3))
    jpeg = next(data for name, data in variants(ASSETS, 5, seed=4) if name.endswith(".jpg"))
    bad = {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"shopping list: eggs, milk\n" * 10,
    }
    for name, data in [*bad.items(), *good]:
        drop(devstack.inbox, name, data)
    failed = devstack.data / "failed"
    wait_for(
        lambda: left(devstack) == 0 and count(failed) == 2 * len(bad),
        120, "good files done and bad ones failed", devstack,
    )
    for name in bad:
        assert (failed / name).read_bytes() == bad[name]  # kept as it came, for a look
        reason = (failed / f"{name}.reason").read_text()
        assert reason.count("\n") == 1 and len(reason.strip()) > 5
    assert "empty file" in (failed / "empty.jpg.reason").read_text()
    with open_store(devstack) as store:
        assert store.count_results(WORKFLOW) == len(good)
        events = store.events(FAILED_EVENT, limit=100)
    assert sorted(e.detail["item"] for e in events) == sorted(bad)
    assert os.listdir(devstack.inbox) == []


def test_dev_up_starts_and_ctrl_c_stops_everything(tmp_path: Path):
    import tempfile

    run = Path(tempfile.mkdtemp(prefix="fbx-"))
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("fieldbox")), "dev", "up", "--data", str(tmp_path / "d"),
         "--run", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert "are RUNNING" in text, text
        assert f"drop images into   {tmp_path / 'd' / 'inbox'}/" in text
        pids = [int(p) for p in subprocess.run(
            ["pgrep", "-f", "fieldbox.services.workflows"], capture_output=True, text=True, check=False
        ).stdout.split()]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped; data kept in" in out
        for pid in pids:  # nothing of this stack survives (others' stacks may run in parallel)
            cmd = Path(f"/proc/{pid}/environ")
            if cmd.exists() and str(run).encode() in cmd.read_bytes():
                raise AssertionError(f"pid {pid} of this stack still runs")
        assert (tmp_path / "d" / "log" / "workflows.log").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        import shutil

        shutil.rmtree(run, ignore_errors=True)


def test_odd_names_and_image_modes_each_end_with_a_result_or_a_reason(devstack: DevStack):
    import io

    import numpy as np
    from PIL import Image

    from fieldbox.workflows.inbox import display_name

    with Image.open(ASSETS / "astronaut.png") as img:
        rgb = img.convert("RGB").resize((256, 256))

    def encode(image: Image.Image, fmt: str) -> bytes:
        out = io.BytesIO()
        image.save(out, format=fmt)
        return out.getvalue()

    grey = rgb.convert("L")
    photos = {
        b"caf\xe9-latin1.png": encode(rgb, "PNG"),  # not UTF-8
        "東京-utf8.png".encode(): encode(grey, "PNG"),
        b"x" * 251 + b".png": encode(rgb.quantize(64), "PNG"),  # 255 bytes, the ext4 limit
        b"sixteen-bit.png": encode(Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257), "PNG"),
        b"cmyk.tiff": encode(rgb.convert("CMYK"), "TIFF"),
        b"new\nline.png": encode(rgb.convert("RGBA"), "PNG"),
    }
    bad = {b"\xff\xfe-garbage.jpg": b"\x00" * 500}
    for raw, data in {**photos, **bad}.items():
        (devstack.inbox / os.fsdecode(raw)).write_bytes(data)
    (devstack.inbox / "a-directory").mkdir()
    wait_for(lambda: left(devstack) == 1 and count(devstack.data / "failed") == 2, 120,
             "every file ended (the directory stays)", devstack)  # fmt: skip
    with open_store(devstack) as store:
        rows = {r.item: r.result for r in store.results(WORKFLOW, limit=100)}
    assert set(rows) == {display_name(os.fsdecode(raw)) for raw in photos}
    for item, result in rows.items():
        assert len(result["detections"]) == 1, (item, result)  # every copy finds her face
    reason = (devstack.data / "failed" / (os.fsdecode(b"\xff\xfe-garbage.jpg") + ".reason")).read_text()
    assert reason.count("\n") == 1 and "not an image" in reason
    log = (devstack.log_dir / "workflows.log").read_text()
    assert "a-directory is a directory (only files are taken); left where it is" in log
    assert "Traceback" not in log
