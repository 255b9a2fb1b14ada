"""The security claims, checked on booted images under QEMU.

The threat: someone on the network, someone holding the serial cable, and a
hostile input (a photo crafted to break the image decoder, which then runs
code as the runner). The claims (README, "Threat model"):

* the release image gives no shell on any console, and its root account is locked;
* each program runs as its own unprivileged user (only ``ota`` as root);
* only the store writer can read the key-encryption key; the runner can reach
  neither the key nor the store's socket; logs are not world-readable;
* nothing listens on a TCP or UDP port.

The release image (what ``make image`` makes) is booted and probed the way
someone with the cable would: input on the serial console and on the virtio
console, then its disk read back after the power is cut (owners and modes of
what the boot created on ``/data``). What can only be seen from inside a running
system (process owners, a read attempted as another user, listening sockets)
is checked on the debug image, which is the same build plus a root shell on
hvc0: the shell is the one thing the release image must not have.
"""

from __future__ import annotations

import base64
import re
import secrets
import socket
import time
from pathlib import Path

import pytest
from diskread import cat, ls, partition, stat

from fieldbox_host.image.build import BuildResult
from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
USERS = {"store": 701, "runner": 702, "workflows": 703, "sync": 704, "monitor": 705}
"""Program -> uid (image/users.txt)."""


def test_release_image_gives_no_shell_and_keeps_its_secrets(
    release_image: BuildResult, tmp_path: Path
) -> None:
    assert release_image.image is not None
    # debug_shell=True only wires QEMU's virtio console to a socket: the image has no shell behind it.
    machine = Machine(release_image.image, tmp_path / "vm", debug_shell=True)
    try:
        machine.start()
        machine.wait_ready(timeout=300)
        token = secrets.token_hex(4)
        probe = f"\n\nroot\n\necho FBX-{token}-$((6*7))\nid\n".encode()
        machine.write_console(probe)
        hvc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hvc.connect(str(machine.workdir / "hvc0.sock"))
        hvc.sendall(probe)
        hvc.settimeout(1.0)
        answer = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                answer += hvc.recv(4096)
            except TimeoutError:
                continue
        hvc.close()
        console = machine.console_text()
        for text in (console, answer.decode("utf-8", "replace")):
            assert f"FBX-{token}-42" not in text, "a console answered like a shell"
            assert "uid=0" not in text
            assert not re.search(r"(?m)^[#$] ?$|login:", text), text[-500:]
    finally:
        machine.kill()
    data = partition(machine.overlay, 4, tmp_path)
    root_slot = partition(machine.overlay, 2, tmp_path)
    mode, uid, _ = stat(data, "/keys")
    assert (mode & 0o7777, uid) == (0o700, USERS["store"])
    mode, uid, _ = stat(data, "/keys/kek")
    assert (mode & 0o777, uid) == (0o600, USERS["store"])
    mode, uid, _ = stat(data, "/store")
    assert (mode & 0o7777, uid) == (0o700, USERS["store"])
    for name in ls(data, "/store"):
        mode, uid, _ = stat(data, f"/store/{name}")
        assert uid == USERS["store"] and mode & 0o007 == 0, name
    mode, uid, _ = stat(data, "/inbox")
    assert uid == USERS["workflows"] and mode & 0o007 == 0
    logs = ls(data, "/log")
    assert any(name.endswith(".log") for name in logs), logs
    mode, _, _ = stat(data, "/log")
    assert mode & 0o007 == 0
    for name in logs:
        mode, _, _ = stat(data, f"/log/{name}")
        assert mode & 0o007 == 0, f"/data/log/{name} is world-readable"
    # An id of its own, made at first boot (QEMU's virt board has no serial number: random).
    assert re.fullmatch(r"fbx-[0-9a-f]{16}\n", cat(data, "/device_id").decode()), cat(data, "/device_id")
    # Root locked, and no account that can log in.
    shadow = cat(root_slot, "/etc/shadow").decode()
    assert re.search(r"(?m)^root:[*!]", shadow), "the root account must be locked"
    for line in cat(root_slot, "/etc/passwd").decode().splitlines():
        name, _, uid_text, *_rest, shell = line.split(":")
        if name.startswith("fieldbox-"):
            assert shell == "/usr/sbin/nologin"
    # The key never appeared on the serial line.
    kek = cat(data, "/keys/kek")
    assert len(kek) >= 32
    for form in (kek.hex(), base64.b64encode(kek).decode(), kek.decode("latin-1")):
        for start in range(0, max(1, len(form) - 16), 16):
            assert form[start : start + 16] not in console


def test_programs_run_as_their_own_users_with_only_what_they_need(booted: Machine) -> None:
    # Owner of every supervisord program's processes (from /proc: ps is not in the image).
    table = booted.run(
        "for d in /proc/[0-9]*; do"
        " u=$(sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p' $d/status 2>/dev/null);"
        " c=$( { tr '\\0' ' ' <$d/cmdline; } 2>/dev/null); [ -n \"$c\" ] && echo \"$u $c\"; done; true"
    ).check()
    owners: dict[str, set[int]] = {}
    for line in table.splitlines():
        uid_text, _, cmd = line.partition(" ")
        found = re.search(r"-m fieldbox\.services\.(\w+)", cmd)
        if found:
            owners.setdefault(found.group(1), set()).add(int(uid_text))
        if "fieldbox-ota-loop" in cmd:
            owners.setdefault("ota", set()).add(int(uid_text))
    assert owners == {**{p: {u} for p, u in USERS.items()}, "ota": {0}}, table
    # The key: the store writer reads it, the runner (the image decoder) cannot.
    as_user = "setpriv --reuid={0} --regid={0} --init-groups --inh-caps=-all"
    denied = booted.run(f"{as_user.format('fieldbox-runner')} cat /data/keys/kek >/dev/null")
    assert denied.rc != 0 and "Permission denied" in denied.output, denied.output
    allowed = booted.run(f"{as_user.format('fieldbox-store')} cat /data/keys/kek | wc -c").check()
    assert int(allowed.strip()) >= 32
    denied = booted.run(f"{as_user.format('fieldbox-runner')} ls /data/store")
    assert denied.rc != 0, denied.output
    # The store's socket: open to the programs that write results, not to the runner.
    connect = (
        "python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); "
        "s.connect('/run/fieldbox/store/store.sock'); print('connected')\""
    )
    assert "connected" in booted.run(f"{as_user.format('fieldbox-flow')} {connect}").check()
    refused = booted.run(f"{as_user.format('fieldbox-runner')} {connect}")
    assert refused.rc != 0 and "PermissionError" in refused.output, refused.output
    # The boot partition is read-only; a slot-state write opens it for the moment it needs.
    mounts = booted.run("cat /proc/mounts").check()
    assert re.search(r"^\S+ /boot/firmware vfat ro[,\s]", mounts, re.M), mounts
    before = booted.run("fieldbox bootctl status --json").check()
    booted.run("fieldbox bootctl set-trial other && fieldbox bootctl set-trial booted").check()
    assert booted.run("fieldbox bootctl status --json").check() != before  # two copies were written
    mounts = booted.run("cat /proc/mounts").check()
    assert re.search(r"^\S+ /boot/firmware vfat ro[,\s]", mounts, re.M), mounts
    # Nothing listens on the network: no TCP socket in LISTEN (0A), no bound UDP socket.
    for table_name in ("tcp", "tcp6", "udp", "udp6"):
        rows = booted.run(f"cat /proc/net/{table_name}").check().splitlines()[1:]
        if table_name.startswith("tcp"):
            rows = [r for r in rows if r.split()[3] == "0A"]
        assert not rows, f"/proc/net/{table_name}: {rows}"
