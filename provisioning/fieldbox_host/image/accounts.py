"""The image's service accounts: one unprivileged user per supervisord program.

The table is ``image/users.txt`` (name, fixed id, supplementary groups). The
build writes the entries straight into the tree's ``passwd``, ``group``,
``shadow`` and ``gshadow`` rather than running ``useradd`` in the chroot: no
emulated process, no allocation from a range, and the same bytes in every build
(the shadow "last change" day is the build epoch's). Ids are fixed because
``/data`` outlives a root slot: an update or a rollback must find every file
owned by the numbers it expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fieldbox_host.image.errors import ImageError

SHELL = "/usr/sbin/nologin"
HOME = "/nonexistent"
ID_RANGE = range(700, 800)
"""Ours: below Debian's dynamic system range would collide with base-passwd's, above 999 with users."""


@dataclass(frozen=True)
class Account:
    """One service user; its primary group has the same name and id."""

    name: str
    uid: int
    groups: tuple[str, ...]
    comment: str


def load(path: Path) -> list[Account]:
    """Parse ``users.txt``; ids, names and groups are checked so a typo fails the build, not the boot."""
    accounts: list[Account] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 3)
        if len(fields) < 3:
            raise ImageError(f"{path}:{number}: expected 'name id groups [comment]'", "fix the line")
        name, uid_text, groups_text = fields[:3]
        if not uid_text.isdigit() or int(uid_text) not in ID_RANGE:
            raise ImageError(
                f"{path}:{number}: id {uid_text!r} is not in {ID_RANGE.start}-{ID_RANGE.stop - 1}",
                "pick a free id in the range",
            )
        if not name.replace("-", "").isalnum() or not name[0].isalpha() or len(name) > 32:
            raise ImageError(f"{path}:{number}: {name!r} is not a valid user name", "use [a-z][a-z0-9-]*")
        groups = () if groups_text == "-" else tuple(groups_text.split(","))
        accounts.append(Account(name, int(uid_text), groups, fields[3] if len(fields) > 3 else ""))
    names = [a.name for a in accounts]
    ids = [a.uid for a in accounts]
    if len(set(names)) != len(names) or len(set(ids)) != len(ids):
        raise ImageError(f"{path}: a name or id appears twice", "give every account its own name and id")
    return accounts


def _table(path: Path) -> list[list[str]]:
    return [line.split(":") for line in path.read_text(encoding="utf-8").splitlines() if line]


def _write(path: Path, rows: list[list[str]], mode: int) -> None:
    path.write_text("".join(":".join(row) + "\n" for row in rows), encoding="utf-8")
    path.chmod(mode)


def install(root: Path, accounts: list[Account], epoch: int) -> None:
    """Add ``accounts`` (users, primary groups, memberships) to the tree at ``root``.

    Refuses an id or name the base system already uses. Passwords are locked
    (``!``) and the shell is nologin: nobody logs in as a service.
    """
    etc = root / "etc"
    passwd, group = _table(etc / "passwd"), _table(etc / "group")
    shadow, gshadow = _table(etc / "shadow"), _table(etc / "gshadow")
    taken_users = {row[0] for row in passwd} | {row[2] for row in passwd}
    taken_groups = {row[0] for row in group} | {row[2] for row in group}
    day = str(max(epoch, 0) // 86400)
    for acct in accounts:
        if acct.name in taken_users or str(acct.uid) in taken_users:
            raise ImageError(f"user {acct.name} ({acct.uid}) is in the base system already", "pick another")
        if acct.name in taken_groups or str(acct.uid) in taken_groups:
            raise ImageError(f"group {acct.name} ({acct.uid}) is in the base system already", "pick another")
        gecos = acct.comment.split(":")[0][:60]
        passwd.append([acct.name, "x", str(acct.uid), str(acct.uid), gecos, HOME, SHELL])
        shadow.append([acct.name, "!", day, "0", "99999", "7", "", "", ""])
        group.append([acct.name, "x", str(acct.uid), ""])
        gshadow.append([acct.name, "!", "", ""])
    for acct in accounts:
        for name in acct.groups:
            for rows, member_col in ((group, 3), (gshadow, 3)):
                row = next((r for r in rows if r[0] == name), None)
                if row is None:
                    raise ImageError(f"user {acct.name}: no group {name!r} in the image", "fix users.txt")
                members = [m for m in row[member_col].split(",") if m]
                if acct.name not in members:
                    members.append(acct.name)
                row[member_col] = ",".join(members)
    _write(etc / "passwd", passwd, 0o644)
    _write(etc / "group", group, 0o644)
    _write(etc / "shadow", shadow, 0o640)
    _write(etc / "gshadow", gshadow, 0o640)
