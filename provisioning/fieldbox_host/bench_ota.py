"""Benchmark section "ota": an app-only update of the image under QEMU TCG (512 MiB), measured in one run.

A fleet is made on the spot (keys, repository, ``fieldbox serve --repo`` on
loopback); v1 and v2 (the same tree with a new version: an app-only change)
are built with the repository's root baked in; v1 boots (debug image: the rows
read the guest through its shell), v2 is published, and in the same guest:

* bytes downloaded for the update against the whole bundle (target ≤ 10 %);
* slot-write throughput of the install (image bytes / write phase) against a
  raw ``dd`` of the running slot onto the same partition (target ≥ 0.7); the
  whole install (index, write, read-back) is its own row;
* peak RSS of the update client during the install (``ru_maxrss`` of the
  ``fieldbox ota install`` process; target ≤ 60 MiB);
* time from ``fieldbox ota install`` to the commit after the trial boot;
* idle guest memory after the commit, with the update machinery in place
  (target ≤ 120 MiB).

Needs root (it builds images), like ``make image``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import time
from pathlib import Path

from fieldbox_host.bench import Row, Skip

SECTION = "ota"
BUILD = Path("build")
OTA_TOML = """\
repository_url = ""
interval_s = 3600.0
first_check_s = 3600.0
auto_install = false
health_stable_s = 5.0
"""


def run() -> list[Row]:
    """The rows (see the module docstring)."""
    if os.geteuid() != 0:
        raise Skip("needs root (builds images)")
    from fieldbox_host.image.build import BuildOptions, build_image
    from fieldbox_host.qemu import GUESTFWD_ADDR, Machine
    from fieldbox_host.release import keys as keyring
    from fieldbox_host.release.publish import release_image
    from fieldbox_host.release.repository import Repository
    from fieldbox_host.serve import IngestDB, IngestServer

    with tempfile.TemporaryDirectory(prefix="fieldbox-bench-ota-") as tmp:
        work = Path(tmp)
        keyring.init_keys(work / "keys", passphrase=None)
        ring = keyring.KeyRing(work / "keys")
        signers = {role: ring.signer(role) for role in keyring.ROLES}
        repo = Repository(work / "repo")
        repo.create({role: ring.public_key(role) for role in keyring.ROLES}, signers)
        overlay = work / "overlay/etc/fieldbox"
        overlay.mkdir(parents=True)
        (overlay / "ota.toml").write_text(OTA_TOML)
        db = IngestDB(work / "ingest.sqlite")
        server = IngestServer(("127.0.0.1", 0), db, repo=repo.directory)
        server.serve_in_thread()
        try:
            images = {}
            for version in ("0.1.0", "0.2.0"):
                result = build_image(
                    BuildOptions(
                        build_dir=BUILD,
                        output_dir=work / "images",
                        version=version,
                        repo=repo.directory,
                        update_url=f"http://{GUESTFWD_ADDR}/repo/",
                        overlay=work / "overlay",
                        compress=False,
                        debug_shell=True,
                    )
                )
                assert result.image is not None
                images[version] = result.image
            port = int(server.server_address[1])
            with Machine(images["0.1.0"], work / "vm", guestfwd_port=port) as machine:
                machine.start()
                machine.wait_ready(timeout=400)
                return _measure(machine, lambda: release_image(images["0.2.0"], repo, signers))
        finally:
            server.shutdown()
            server.server_close()
            db.close()


def _py(machine: object, code: str, timeout: float = 1800) -> str:
    out: str = machine.run(f"python3 -c {shlex.quote(code)}", timeout=timeout).check()  # type: ignore[attr-defined]
    return out.strip().splitlines()[-1]


def _measure(machine: object, publish: object) -> list[Row]:
    dd = float(
        _py(
            machine,
            (
                "import subprocess, time; t = time.monotonic(); "
                "subprocess.run(['dd', 'if=/dev/vda2', 'of=/dev/vda3', 'bs=1M', 'conv=fsync'], check=True, "
                "capture_output=True); print(time.monotonic() - t)"
            ),
        )
    )
    published = publish()  # type: ignore[operator]
    started = time.monotonic()
    install = json.loads(
        _py(
            machine,
            (
                "import json, resource, subprocess, time; t = time.monotonic(); "
                "subprocess.run(['fieldbox', 'ota', 'install', '--reboot', 'later'], check=True, "
                "capture_output=True); "
                "print(json.dumps({'seconds': time.monotonic() - t, "
                "'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
            ),
        )
    )
    history = [json.loads(x) for x in machine.run("fieldbox ota history --json").check().splitlines()]  # type: ignore[attr-defined]
    entry = next(e for e in reversed(history) if e.get("event") == "installed")
    machine.reboot()  # type: ignore[attr-defined]
    machine.wait_for(r"fieldbox ota: committed 0\.2\.0", 900)  # type: ignore[attr-defined]
    to_commit = time.monotonic() - started
    time.sleep(20)
    meminfo = machine.run("cat /proc/meminfo").check()  # type: ignore[attr-defined]
    fields = {m[0]: int(m[1]) for m in re.findall(r"^(\w+):\s+(\d+)", meminfo, re.M)}
    idle = (fields["MemTotal"] - fields["MemAvailable"]) / 1024
    image_mib = entry["image"] / 2**20
    share = entry["downloaded"] / published.length
    write_rate = image_mib / max(entry["write_s"], 1e-6)
    raw_rate = image_mib / dd
    whole_rate = image_mib / install["seconds"]
    rss = install["maxrss_kib"] / 1024
    return [
        Row(
            SECTION,
            "bytes downloaded, app-only change (chunks from the running slot)",
            entry["downloaded"] / 1e6,
            "MB",
            baseline=published.length / 1e6,
            baseline_name="the whole bundle",
            target="≤ 10 %",
            met=share <= 0.10,
        ),
        Row(
            SECTION,
            "install: slot-write throughput (verified chunks into the inactive slot)",
            write_rate,
            "MiB/s",
            baseline=raw_rate,
            baseline_name="dd of the running slot onto it, conv=fsync",
            target="≥ 0.7",
            met=write_rate / raw_rate >= 0.7,
        ),
        Row(
            SECTION,
            "install: whole (TUF check, local index, write, read-back) — informational",
            whole_rate,
            "MiB/s",
            baseline=raw_rate,
            baseline_name="same dd",
            note=f"index {entry['index_s']} s, write {entry['write_s']} s, read-back {entry['verify_s']} s",
        ),
        Row(
            SECTION, "update client peak RSS during the install", rss, "MiB", target="≤ 60 MiB", met=rss <= 60
        ),
        Row(SECTION, "ota install -> committed (reboot, trial boot, health check)", to_commit, "s"),
        Row(
            SECTION,
            "guest memory used, programs idle, after the update",
            idle,
            "MiB",
            target="≤ 120 MiB",
            met=idle <= 120,
        ),
    ]
