"""``fieldbox ota status | check | install | history`` on the host, against a real repository.

The device's paths are pointed at temporary directories (``FIELDBOX_DATA``,
``FIELDBOX_ETC``, ``FIELDBOX_BOOTFS``, the slots as files); the booted slot,
which the kernel command line gives on a device, is set to A.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fieldbox import bootctl, bootenv
from fieldbox.cli import main
from ota_fleet import FakeSlots, Fleet, change_app, rootfs_bytes

pytestmark = pytest.mark.integration

V1 = rootfs_bytes(seed=11)


@pytest.fixture
def device(tmp_path: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> FakeSlots:
    slots = FakeSlots(tmp_path / "dev", V1)
    etc = tmp_path / "etc"
    (etc / "update").mkdir(parents=True)
    (etc / "update/root.json").write_bytes((fleet.repo.metadata_dir / "1.root.json").read_bytes())
    (etc / "ota.toml").write_text(f'repository_url = "{fleet.url}"\ntimeout_s = 5.0\n')
    (etc / "build-info").write_text("FIELDBOX_VERSION=0.1.0\nFIELDBOX_BOARD=qemu-arm64\n")
    bootfs = tmp_path / "firmware"
    bootfs.mkdir()
    for name, data in zip(bootenv.COPY_NAMES, bootenv.initial_files(), strict=True):
        (bootfs / name).write_bytes(data)
    for key, value in {
        "FIELDBOX_DATA": tmp_path / "data",
        "FIELDBOX_ETC": etc,
        "FIELDBOX_BOOTFS": bootfs,
        "FIELDBOX_SLOT_A": slots.a,
        "FIELDBOX_SLOT_B": slots.b,
    }.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("FIELDBOX_OTA_CONSOLE", "0")
    monkeypatch.delenv("FIELDBOX_VERSION", raising=False)
    monkeypatch.delenv("FIELDBOX_BOARD", raising=False)
    monkeypatch.setattr(bootctl, "booted_slot", lambda cmdline=None: "A")
    return slots


def test_check_install_status_history(
    fleet: Fleet, device: FakeSlots, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ota", "check"]) == 0
    assert "newest published none" in capsys.readouterr().out
    v2 = change_app(V1, seed=12)
    fleet.publish("0.2.0", v2)
    assert main(["ota", "check"]) == 0
    assert "0.2.0 can be installed" in capsys.readouterr().out
    assert main(["ota", "install", "--reboot", "later"]) == 0
    out = capsys.readouterr().out
    assert "installed 0.2.0 into slot B" in out and "boots on trial at the next reboot" in out
    assert device.b.read_bytes() == v2
    state = bootenv.read_state(Path(str(device.root.parent / "firmware"))).state
    assert (state.slot, state.trial) == ("B", True)
    assert main(["ota", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending"]["version"] == "0.2.0" and status["trial"] is True
    assert main(["ota", "history"]) == 0
    assert "installed 0.2.0" in capsys.readouterr().out
    # a second install while the trial is pending is refused with a reason
    assert main(["ota", "install"]) == 1
    assert "a trial boot is in progress" in capsys.readouterr().err


def test_an_image_without_a_trusted_root_says_so(
    device: FakeSlots, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    (Path(os.environ["FIELDBOX_ETC"]) / "update/root.json").unlink()
    assert main(["ota", "check"]) == 1
    err = capsys.readouterr().err
    assert "this image trusts no update repository" in err and "--repo" in err
