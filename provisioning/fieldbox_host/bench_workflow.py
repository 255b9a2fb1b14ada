"""Benchmark section "workflow": results per second through the whole inbox workflow.

* **ours**: the REAL supervisord with the image's config (``DevStack``, as
  ``fieldbox dev up``) running the store writer, runner and workflows
  programs; :data:`ITEMS` distinct real photographs (crops/flips/resizes of
  ``build/assets``, JPEG and PNG, prepared before the clock starts) are
  dropped into the inbox (``x.tmp`` + rename), and the clock stops when the
  last file has left the inbox and ``processing/``, which happens only after
  its result was committed (fsynced) to the encrypted store. That is everything a device
  does per item: inbox scan, settle time (0.5 s, paid once), durable claim,
  file read, IPC to the runner, decode + inference, IPC to the store writer,
  encrypted commit, durable delete of the input (the image keeps no copy). Also reported: the steady rate
  (first to last result, leaving out the settle time and start-up).
* **baseline**: the same agent and the same encrypted store in one process,
  no services: ``agent.run(data)`` then ``store.put_result(...)`` (one
  transaction per item), over the same images held in memory. The ratio is
  what the service architecture (files, processes, sockets, durable moves)
  costs or gains against a bare loop.

Both run back to back :data:`REPEATS` times, alternating, on fresh
directories; the best time of each side is reported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from fieldbox_host.bench import Row, Skip
from fieldbox_host.devstack import DevStack, repo_root
from fieldbox_host.photos import drop, variants

SECTION = "workflow"
ITEMS = 300
REPEATS = 3
WORKFLOW = "face-inbox"


def _inbox_run(items: list[tuple[str, bytes]]) -> tuple[float, float]:
    """(total seconds from first drop to last commit, steady seconds first->last result)."""
    run = Path(tempfile.mkdtemp(prefix="fbx-bench-"))
    data = Path(tempfile.mkdtemp(prefix="fieldbox-bench-data-"))
    stack = DevStack(data=data, run=run)
    try:
        stack.start(timeout=90)
        pending = (stack.inbox, data / "processing" / WORKFLOW)
        start = time.perf_counter()
        for name, blob in items:
            drop(stack.inbox, name, blob)
        first = None
        deadline = start + 600
        while True:
            n = len(items) - sum(len(os.listdir(d)) for d in pending if d.exists())
            now = time.perf_counter()
            if n and first is None:
                first = now
            if n >= len(items):
                break
            if now > deadline:
                raise Skip(f"only {n} of {len(items)} items done after 600 s")
            time.sleep(0.01)
        end = time.perf_counter()
        failed = len(os.listdir(data / "failed")) if (data / "failed").exists() else 0
        if failed:
            raise Skip(f"{failed} items failed; see {stack.log_dir}")
        return end - start, end - (first or start)
    finally:
        stack.stop()
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


def _direct_run(items: list[tuple[str, bytes]], root: Path) -> float:
    """Seconds for agent.run + store.put_result per item, in one process."""
    from fieldbox.agents import load_agent
    from fieldbox.store import FileKeyProvider, Store
    from fieldbox.workflows.items import result_keys

    os.environ.setdefault(
        "FIELDBOX_MODELS", os.pathsep.join(str(root / "build" / d) for d in ("assets", "models"))
    )
    agent = load_agent(root / "rootfs-overlay" / "etc" / "fieldbox" / "agents" / "face-detector.toml")
    data = Path(tempfile.mkdtemp(prefix="fieldbox-bench-direct-"))
    try:
        with Store.open(data / "store" / "fieldbox.db", keys=FileKeyProvider(data / "keys" / "kek")) as store:
            start = time.perf_counter()
            for name, blob in items:
                result = agent.run(blob)
                key = result_keys(WORKFLOW, name, blob, 1)[0]
                store.put_result(key, WORKFLOW, agent.name, name, result, 2)
            return time.perf_counter() - start
    finally:
        shutil.rmtree(data, ignore_errors=True)


def bench() -> list[Row]:
    """Results/s through the inbox workflow under supervisord vs a bare in-process loop."""
    root = repo_root()
    assets = root / "build" / "assets"
    if not (assets / "face_detection_short_range.tflite").exists():
        raise Skip("no build/assets (run make assets)")
    items = list(variants(assets, ITEMS, seed=7))
    direct, total, steady = float("inf"), float("inf"), float("inf")
    for _ in range(REPEATS):  # alternate, keep each side's best: a shared machine only adds time
        direct = min(direct, _direct_run(items, root))
        run_total, run_steady = _inbox_run(items)
        total, steady = min(total, run_total), min(steady, run_steady)
    rate_direct = len(items) / direct
    note = f"{ITEMS} photos, real supervisord, face-detector, store priority 2, best of {REPEATS}"
    return [
        Row(SECTION, "inbox -> runner -> encrypted store, whole run", len(items) / total, "results/s",
            baseline=rate_direct, baseline_name="agent.run + put_result loop, one process", note=note),
        Row(SECTION, "same, steady state (first to last result)", (len(items) - 1) / steady, "results/s",
            baseline=rate_direct, baseline_name="same loop"),
    ]
