"""``fieldbox keys`` and ``fieldbox release`` through the real CLI, as a release manager runs them.

A passphrase-protected root key, a release of a (small) built image, list,
refresh, a key rotation, and every refusal on the way: each one line on
stderr and exit code 1, nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fieldbox_host.cli import main
from ota_fleet import rootfs_bytes, write_image

pytestmark = pytest.mark.integration


def fieldbox(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return int(done.value.code or 0)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pass").write_text("correct horse battery staple\n")
    assert fieldbox("keys", "init", "--encrypt-root", "--root-passphrase-file", "pass") == 0
    return tmp_path


def test_init_show_release_list_refresh(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = site / "keys"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    assert all(oct((keys / f"{r}.key").stat().st_mode & 0o777) == "0o600" for r in ("root", "timestamp"))
    assert b"ENCRYPTED" in (keys / "root.key").read_bytes()
    assert b"ENCRYPTED" not in (keys / "timestamp.key").read_bytes()
    assert (site / "repo/metadata/1.root.json").is_file()
    capsys.readouterr()
    assert fieldbox("keys", "show") == 0
    out = capsys.readouterr().out
    assert "offline+pw" in out and out.count(" yes ") == 4
    image = write_image(site, "0.2.0", rootfs_bytes(3))
    assert fieldbox("release", str(image), "--compatible-from", "0.1.0") == 0
    out = capsys.readouterr().out
    assert "published rootfs/qemu-arm64/fieldbox-0.2.0.fbb" in out and "targets v2" in out
    assert fieldbox("release", "list") == 0
    out = capsys.readouterr().out
    assert "qemu-arm64   0.2.0" in out and "0.1.0" in out
    assert fieldbox("release", "refresh") == 0
    assert "re-signed timestamp; timestamp v3" in capsys.readouterr().out
    assert fieldbox("release", "refresh", "--snapshot", "--targets") == 0
    assert "re-signed targets, snapshot, timestamp" in capsys.readouterr().out


def test_refusals_are_one_line_with_exit_code_1(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    cases = [
        (("keys", "init"), "already holds"),
        (("release", "nothing.img"), "no such image"),
        (("release", "whatever"), "neither an image file nor refresh or list"),
        (("release", "list", "--repo", "elsewhere"), "is not an update repository"),
        (("release", "refresh", "--keys", "nokeys"), "holds no update keys"),
    ]
    image = write_image(site, "0.2.0", rootfs_bytes(3))
    (site / "fieldbox-0.2.0-arm64.img.zst").write_bytes(b"x")
    cases.append((("release", str(site / "fieldbox-0.2.0-arm64.img.zst")), "is compressed"))
    for args, message in cases:
        assert fieldbox(*args) == 1, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("fieldbox: error: ") and message in err and "\n" not in err, (args, err)
    assert fieldbox("release", str(image)) == 0
    capsys.readouterr()
    assert fieldbox("release", str(image)) == 1
    assert "0.2.0 is not newer" in capsys.readouterr().err
    (site / "keys/targets.key").chmod(0o644)
    assert fieldbox("release", "refresh") == 1
    assert "readable by others" in capsys.readouterr().err


def test_rotation_needs_the_passphrase_and_names_the_new_key(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = json.loads((site / "keys/keys.json").read_text())["roles"]["timestamp"]["keyid"]
    (site / "wrong").write_text("not it\n")
    assert fieldbox("keys", "rotate", "timestamp", "--root-passphrase-file", "wrong") == 1
    assert "wrong passphrase" in capsys.readouterr().err
    monkeypatch.setenv("FIELDBOX_ROOT_PASSPHRASE", "correct horse battery staple")
    assert fieldbox("keys", "rotate", "timestamp") == 0
    out = capsys.readouterr().out
    assert "root v2 names the new key" in out
    after = json.loads((site / "keys/keys.json").read_text())["roles"]["timestamp"]["keyid"]
    assert after != before and (site / "keys/retired").is_dir()
    root = json.loads((site / "repo/metadata/2.root.json").read_text())
    assert root["signed"]["roles"]["timestamp"]["keyids"] == [after]
    assert fieldbox("keys", "show") == 0
    assert capsys.readouterr().out.count(" yes ") == 4
    assert (site / "keys/timestamp.key").stat().st_mode & 0o777 == 0o600
