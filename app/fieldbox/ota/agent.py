"""The update lifecycle on the device: check -> install -> trial boot -> health -> commit or roll back.

::

    slot A runs v1 ── check ──> newer, acceptable release? ── install ──> slot B written, read back
       ^                                                                    │ set-trial B, reboot
       │                                                                    v
       └── rolled back (reported) <── health fails, or the boot    trial boot of B ── healthy ──>
                                      counter runs out (crash,     mark-good B: committed (reported)
                                      hang + power cycle)

One short-lived run of ``python3 -m fieldbox.ota.agent`` per wake-up (the
``ota`` supervisord program is a shell loop around it, so no long-running
process keeps python-tuf and cryptography in memory). A run first reconciles
the boot with what ``/data/ota/state.json`` says (a trial boot gets its health
check; a boot back on the old slot is recorded as a rollback), sends history
entries not yet reported to the store's event log (synced to the server), and
then, when a check is due, checks and installs. It prints how many seconds to
sleep until the next run.

Success is reported only when the new slot is committed, never at install.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fieldbox import bootctl
from fieldbox.errors import FieldboxError, UpdateError, UpdateRefusedError
from fieldbox.ota import state as ostate
from fieldbox.ota.config import OtaConfig, load_config
from fieldbox.ota.state import OtaState, Pending
from fieldbox.paths import data_dir

log = logging.getLogger("fieldbox.ota")

REPORTED = ("refused", "installed", "committed", "rolled_back", "failed")
"""History events that go to the store's event log as ``ota.<event>`` (and from there to the server)."""
REBOOT = "/usr/sbin/fieldbox-reboot"


def console(line: str) -> None:
    """One line on the serial console (where a user at the bench sees the update happen)."""
    if os.environ.get("FIELDBOX_OTA_CONSOLE", "1") != "1":
        return
    try:
        with open("/dev/console", "a", encoding="utf-8") as fh:
            fh.write(f"fieldbox ota: {line}\n")
    except OSError:
        pass


def slot_devices() -> dict[str, Path]:
    """Slot name -> block device of its root partition (``$FIELDBOX_SLOT_A``/``_B`` override)."""
    if os.environ.get("FIELDBOX_SLOT_A") and os.environ.get("FIELDBOX_SLOT_B"):
        return {"A": Path(os.environ["FIELDBOX_SLOT_A"]), "B": Path(os.environ["FIELDBOX_SLOT_B"])}
    root = ""
    with open("/proc/mounts", encoding="utf-8") as fh:
        for line in fh:
            dev, mnt, *_ = line.split()
            if mnt == "/" and dev.startswith("/dev/"):
                root = dev
    if not root or root[-1] not in "23":
        raise UpdateError(
            f"the root filesystem ({root or 'unknown'}) is not an A/B slot",
            "updates need the fieldbox disk layout",
        )
    prefix = root[:-1]
    return {"A": Path(prefix + "2"), "B": Path(prefix + "3")}


def report_events(st: OtaState) -> None:
    """Send history entries newer than the last reported one to the store's event log."""
    from fieldbox.services.clients import StoreClient

    entries = [
        e for e in ostate.history() if e.get("time", 0) > st.reported_until and e.get("event") in REPORTED
    ]
    if not entries:
        return
    try:
        store = StoreClient(timeout=20.0)
        try:
            for e in entries:
                store.add_event(f"ota.{e['event']}", {k: v for k, v in e.items() if k != "event"})
                st.reported_until = float(e["time"])
        finally:
            store.close()
    except FieldboxError as exc:
        log.warning("ota events not reported yet (%s); the next run retries", exc)
    st.save()


def _reboot(why: str) -> None:
    console(f"rebooting: {why}")
    subprocess.Popen([REBOOT], start_new_session=True, stdin=subprocess.DEVNULL)


def reconcile(cfg: OtaConfig, st: OtaState, bootfs: Path) -> str:
    """Settle what the last boot means; returns a short word for the log."""
    status = bootctl.status(bootfs)
    booted, sel = status.booted, status.selection.state
    version = os.environ.get("FIELDBOX_VERSION", "?")
    if booted is not None and sel.trial and sel.slot == booted:
        return _trial(cfg, st, bootfs, booted, version)
    pending = st.pending
    if pending is None:
        return "idle"
    if booted == pending.slot and not sel.trial:
        _committed(st, pending.version, booted, "committed (found on the next boot)")
        return "committed"
    if sel.slot == pending.slot and sel.trial:
        return "waiting for reboot"
    if sel.generation > pending.generation or sel.slot != pending.slot:
        reason = (
            f"trial boot of {pending.version} in slot {pending.slot} did not pass its health check "
            f"within {sel.limit} boots; back on slot {booted}"
        )
        _rolled_back(st, pending.version, reason)
        return "rolled back"
    return "pending"


def _trial(cfg: OtaConfig, st: OtaState, bootfs: Path, booted: str, version: str) -> str:
    from fieldbox.ota import health

    console(f"trial boot of {version} in slot {booted}: health check (up to {cfg.health_timeout_s:.0f} s)")
    verdict = health.check(cfg.health_timeout_s, cfg.health_stable_s, log.info)
    if verdict.ok:
        bootctl.mark_good(bootfs, booted)
        _settle_watchdog()
        _committed(st, version, booted, verdict.reason)
        return "committed"
    bootctl.mark_bad(bootfs, booted)
    _rolled_back(st, version, f"health check failed in slot {booted}: {verdict.reason}")
    _reboot(f"back to slot {'A' if booted == 'B' else 'B'}")
    return "rolled back"


TRIAL_SETTLED = "trial-settled"
"""Created in $FIELDBOX_RUN once a trial boot is committed: fieldbox-watchdog then goes on
feeding the watchdog past the trial's deadline (``trial_deadline_s``)."""


def _settle_watchdog() -> None:
    from fieldbox.paths import run_dir

    try:
        (run_dir() / TRIAL_SETTLED).write_text("committed\n", encoding="ascii")
    except OSError as exc:
        log.warning("cannot tell the watchdog feeder the trial is settled: %s", exc)


def _committed(st: OtaState, version: str, slot: str, reason: str) -> None:
    from fieldbox.ota.version import newer

    if (
        st.pending is not None
        and st.pending.version == version
        and st.pending.floor
        and newer(st.pending.floor, st.floor)
    ):
        st.floor = st.pending.floor
    st.pending = None
    st.save()
    ostate.record("committed", version=version, reason=reason, slot=slot)
    console(f"committed {version} in slot {slot}")


def _rolled_back(st: OtaState, version: str, reason: str) -> None:
    if version not in st.rejected:
        st.rejected = [*st.rejected[-9:], version]
    st.pending = None
    st.save()
    ostate.record("rolled_back", version=version, reason=reason)
    console(f"rolled back {version}: {reason}")


def check_and_install(
    cfg: OtaConfig,
    st: OtaState,
    bootfs: Path,
    *,
    install: bool,
    reboot: str,
    progress: Any = None,
    retry_rejected: bool = False,
) -> dict[str, Any]:
    """One check (and install when ``install``); returns what happened as a dict for the CLI."""
    from fieldbox.ota.client import Checker, running_device
    from fieldbox.ota.install import Installer

    rejected = frozenset() if retry_rejected else frozenset(st.rejected)
    device = running_device(st.floor, rejected)
    st.last_check = time.time()
    checker = Checker(cfg)
    try:
        result = checker.check(device)
    except UpdateError as exc:
        st.last_result = f"check failed: {exc}"
        st.save()
        ostate.record("refused" if isinstance(exc, UpdateRefusedError) else "check_failed", reason=str(exc))
        raise
    for path, reason in result.refused:
        if not any(e.get("reason") == reason for e in ostate.history()[-20:]):
            ostate.record("refused", reason=reason, target=path)
    out: dict[str, Any] = {
        "installed": device.version,
        "newest": result.newest,
        "refused": [r for _, r in result.refused],
    }
    cand = result.candidate
    if cand is None:
        st.last_result = f"up to date ({device.version})" if not result.refused else result.refused[0][1]
        st.save()
        out["action"] = "none"
        return out
    out["candidate"] = cand.info.version
    if not install:
        st.last_result = f"{cand.info.version} available"
        st.save()
        out["action"] = "available"
        return out
    booted = bootctl.booted_slot()
    if booted is None:
        raise UpdateError("cannot tell which slot is running (no fieldbox.slot= on the kernel command line)")
    status = bootctl.status(bootfs)
    if status.selection.state.trial:
        raise UpdateError("a trial boot is in progress", "wait for it to commit or roll back")
    target = "B" if booted == "A" else "A"
    slots = slot_devices()
    console(f"installing {cand.info.version} into slot {target}")
    started = time.monotonic()
    try:
        report = Installer(
            checker.http,
            slots[target],
            slots[booted],
            target,
            retries=cfg.retries,
            progress=_console_progress(target, progress),
        ).install(cand)
    except UpdateError as exc:
        st.last_result = f"install of {cand.info.version} failed: {exc}"
        st.save()
        ostate.record("failed", version=cand.info.version, reason=str(exc))
        console(f"install of {cand.info.version} failed: {exc}")
        raise
    change = bootctl.set_trial(bootfs, target)
    st.pending = Pending(
        cand.info.version, target, change.after.generation, time.time(), cand.info.min_version or ""
    )
    st.last_result = f"{cand.info.version} installed in slot {target}, trial at next boot"
    st.save()
    seconds = round(time.monotonic() - started, 1)
    ostate.record(
        "installed",
        version=cand.info.version,
        slot=target,
        seconds=seconds,
        downloaded=report.downloaded,
        bundle=report.bundle_bytes,
        chunks_local=report.chunks_local,
        chunks_remote=report.chunks_remote,
        chunks_zero=report.chunks_zero,
        chunks_resumed=report.chunks_resumed,
        retries=report.retries,
        image=report.image_bytes,
        index_s=round(report.index_s, 1),
        write_s=round(report.write_s, 1),
        verify_s=round(report.verify_s, 1),
    )
    console(
        f"installed {cand.info.version} in slot {target} in {seconds:.0f} s "
        f"({report.downloaded / 2**20:.1f} of {report.bundle_bytes / 2**20:.1f} MiB downloaded, "
        f"{report.downloaded} bytes)"
    )
    out.update(
        action="installed",
        slot=target,
        seconds=seconds,
        downloaded=report.downloaded,
        bundle=report.bundle_bytes,
    )
    if reboot == "now":
        _reboot(f"into {cand.info.version} in slot {target}, on trial")
        out["rebooting"] = True
    return out


def _console_progress(slot: str, also: Any = None) -> Any:
    """A progress callback that puts a line on the console every 20 % of the slot written."""
    last = [-1]

    def report(done: int, total: int) -> None:
        step = done * 5 // max(total, 1)
        if step != last[0] and done < total:
            console(f"slot {slot}: {done * 100 // max(total, 1)} % written")
            last[0] = step
        if done >= total:
            console(f"slot {slot} written, reading it back")
        if also is not None:
            also(done, total)

    return report


def keep_clock(path: Path | None = None) -> None:
    """Advance the clock floor on /data (fieldbox-init never lets the clock go below it)."""
    from fieldbox.durable import atomic_write

    target = path or data_dir() / ".clock"
    atomic_write(target, f"{int(time.time())}\n".encode())


def run_once(cfg: OtaConfig) -> float:
    """One wake-up of the ``ota`` program; returns seconds until the next one."""
    st = OtaState.load()
    bootfs = bootctl.bootfs_dir()
    what = "unknown"
    try:
        what = reconcile(cfg, st, bootfs)
        if what != "idle":
            log.info("boot: %s", what)
    except FieldboxError as exc:
        log.error("cannot settle the boot state: %s", exc)
    report_events(st)
    keep_clock()
    if not cfg.repository_url:
        return 3600.0
    if st.pending is not None or what == "rolled back":
        return cfg.interval_s
    with open("/proc/uptime", encoding="ascii") as fh:
        uptime = float(fh.read().split()[0])
    if uptime < cfg.first_check_s:
        return cfg.first_check_s - uptime
    due = st.last_check + cfg.interval_s - time.time()
    if due > 0 and st.last_check <= time.time():
        return due
    try:
        check_and_install(cfg, st, bootfs, install=cfg.auto_install, reboot=cfg.reboot)
    except FieldboxError as exc:
        log.error("update check: %s", exc)
    report_events(st)
    return cfg.interval_s


def main() -> int:
    """``python3 -m fieldbox.ota.agent``: one run; prints the seconds to sleep."""
    from fieldbox.services.common import setup_logging

    setup_logging("ota")
    try:
        cfg = load_config()
    except FieldboxError as exc:
        log.error("ota.toml: %s", exc)
        print(3600)
        return 0
    seconds = run_once(cfg)
    print(max(1, int(seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
