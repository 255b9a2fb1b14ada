"""Single arm64 ``.deb`` files (busybox-static, raspi-firmware, u-boot-rpi), fetched
with apt using a private state directory, so the host's apt setup is untouched.

``raspi-firmware`` lives in Debian's ``non-free-firmware`` component, which a
stock host does not list; the private sources list names it. Downloads are kept
in ``build/cache/debs/`` and unpacked with ``dpkg-deb -x``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fieldbox_host.image.debian import MIRROR, SUITE
from fieldbox_host.image.errors import ImageError
from fieldbox_host.image.proc import run

log = logging.getLogger("fieldbox.image")

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _apt_options(state: Path) -> list[str]:
    return [
        "-o", "APT::Architecture=arm64",
        "-o", "APT::Architectures=arm64",
        "-o", f"Dir::State={state}/state",
        "-o", f"Dir::State::Lists={state}/lists",
        "-o", f"Dir::State::status={state}/status",
        "-o", f"Dir::Cache={state}/cache",
        "-o", f"Dir::Etc::SourceList={state}/sources.list",
        "-o", f"Dir::Etc::SourceParts={state}/sources.list.d",
        "-o", "Debug::NoLocking=1",
    ]  # fmt: skip


def _cached(debs_dir: Path, package: str) -> Path | None:
    hits = sorted(debs_dir.glob(f"{package}_*.deb"))
    return hits[-1] if hits else None


def fetch(packages: list[str], cache_dir: Path) -> dict[str, Path]:
    """``.deb`` path for each package, downloading the ones not cached yet."""
    debs_dir = cache_dir / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    out = {p: d for p in packages if (d := _cached(debs_dir, p)) is not None}
    missing = [p for p in packages if p not in out]
    if not missing:
        return out
    state = (cache_dir / "apt-arm64").resolve()
    for sub in ("state", "lists/partial", "cache/archives/partial", "sources.list.d"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    (state / "sources.list").write_text(
        f"deb [arch=arm64 signed-by={KEYRING}] {MIRROR} {SUITE} main non-free-firmware\n", encoding="ascii"
    )
    opts = _apt_options(state)
    log.info("fetching arm64 packages: %s", " ".join(missing))
    run(["apt-get", *opts, "update"], what="apt-get update (arm64, private state)")
    tmp = debs_dir / "partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    run(["apt-get", *opts, "download", *missing], what="apt-get download", cwd=tmp)
    for p in missing:
        got = _cached(tmp, p)
        if got is None:
            raise ImageError(f"apt-get download did not produce {p}")
        final = debs_dir / got.name
        got.rename(final)
        out[p] = final
    shutil.rmtree(tmp)
    return out


def unpack(deb: Path, dest: Path) -> None:
    """``dpkg-deb -x`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", deb, dest], what=f"unpacking {deb.name}")


def version(deb: Path) -> str:
    """The package version recorded in the .deb."""
    return run(["dpkg-deb", "-f", deb, "Version"], what=f"reading {deb.name}").strip()
