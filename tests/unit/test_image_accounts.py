"""The image's service accounts: the table, what the build writes, and that conf.d and init agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fieldbox_host.devstack import SERVICE_USER_VARIABLES
from fieldbox_host.image import accounts
from fieldbox_host.image.errors import ImageError

ROOT = Path(__file__).resolve().parents[2]
USERS = ROOT / "image/users.txt"
CONF_D = ROOT / "rootfs-overlay/etc/supervisor/conf.d"
INIT = ROOT / "rootfs-overlay/usr/sbin/fieldbox-init"
ROOT_PROGRAMS = {"ota": "writes a root slot's block device and the slot state"}
"""Programs that run as root, and why."""


def _base_etc(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/x\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\nnogroup:x:65534:\n")
    (etc / "shadow").write_text("root:*:20000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nvideo:*::\n")


def _rows(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


def test_the_table_installs_users_groups_and_memberships(tmp_path: Path) -> None:
    _base_etc(tmp_path)
    table = accounts.load(USERS)
    accounts.install(tmp_path, table, epoch=1_760_000_000)
    passwd = _rows(tmp_path / "etc/passwd")
    group = _rows(tmp_path / "etc/group")
    shadow = _rows(tmp_path / "etc/shadow")
    for acct in table:
        row = passwd[acct.name]
        assert row[2] == row[3] == str(acct.uid) and row[6] == "/usr/sbin/nologin"
        assert shadow[acct.name][1] == "!" and shadow[acct.name][2] == str(1_760_000_000 // 86400)
        assert group[acct.name][2] == str(acct.uid)
        for name in acct.groups:
            assert acct.name in group[name][3].split(",")
    assert shadow["root"][1] == "*"  # root stays locked
    assert group["fieldbox-store"][3].split(",") == ["fieldbox-flow", "fieldbox-sync", "fieldbox-monitor"]
    assert "fieldbox-runner" not in group["fieldbox-store"][3]  # the decoder cannot reach the store
    # The same table, the same bytes (reproducible root slots).
    again = tmp_path / "again"
    _base_etc(again)
    accounts.install(again, table, epoch=1_760_000_000)
    for name in ("passwd", "group", "shadow", "gshadow"):
        assert (again / "etc" / name).read_bytes() == (tmp_path / "etc" / name).read_bytes()


@pytest.mark.parametrize(
    "line, message",
    [
        ("fieldbox-x 5 -", "not in 700-799"),
        ("fieldbox-x 701 -\nfieldbox-y 701 -", "appears twice"),
        ("Bad_Name! 710 -", "not a valid user name"),
        ("fieldbox-x", "expected"),
    ],
)
def test_a_bad_table_fails_the_build(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "users.txt"
    path.write_text(line + "\n")
    with pytest.raises(ImageError, match=message):
        accounts.load(path)


def test_an_id_the_base_system_uses_is_refused(tmp_path: Path) -> None:
    _base_etc(tmp_path)
    with pytest.raises(ImageError, match="base system"):
        accounts.install(tmp_path, [accounts.Account("nobody", 700, (), "")], 0)


def test_every_program_but_ota_names_its_own_user_and_init_exports_it() -> None:
    table = {a.name for a in accounts.load(USERS)}
    init = INIT.read_text()
    exported = dict(re.findall(r"(FIELDBOX_[A-Z]+_USER)=([a-z-]+)", init))
    assert set(exported) == set(SERVICE_USER_VARIABLES)
    assert set(exported.values()) <= table
    seen = set()
    for conf in sorted(CONF_D.glob("*.conf")):
        text = conf.read_text()
        for program in re.findall(r"^\[(?:program|eventlistener):([^\]]+)\]", text, re.M):
            users = re.findall(r"^user\s*=\s*%\(ENV_(FIELDBOX_[A-Z]+_USER)\)s\s*$", text, re.M)
            if program in ROOT_PROGRAMS:
                assert not users, f"{program} is documented as root"
                continue
            assert len(users) == 1, f"{conf.name}: {program} must run as its own user"
            assert users[0] in exported
            seen.add(exported[users[0]])
    assert len(seen) == len(SERVICE_USER_VARIABLES), "one user per program"
