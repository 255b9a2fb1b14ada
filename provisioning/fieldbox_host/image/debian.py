"""The Debian part of the root filesystem, built once and cached by a hash of its inputs.

``mmdebstrap --variant=minbase`` of bookworm arm64 with ``INITRD=No`` (Debian's
initramfs hook under qemu-user costs ~13 minutes and we ship our own), docs,
man pages and locales excluded at unpack time, then trimmed (apt state, unused
kernel modules) and stored as ``build/cache/debian-<key>.tar`` with a
``.sha256`` beside it. The key covers the package list, the module keep list,
the suite, the mirror, mmdebstrap's version and :data:`TRIM_VERSION`, so an
app-only change reuses the cache and rebuilds the image in about a minute. A
cache whose checksum does not match is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fieldbox_host.image import kmods
from fieldbox_host.image.errors import CacheError, ImageError
from fieldbox_host.image.proc import run, sha256_file

log = logging.getLogger("fieldbox.image")

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
TRIM_VERSION = 2
"""Bump when :func:`trim` changes what it removes: it invalidates every cache."""

DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/bug/*",
)

TRIM_PATHS = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf/templates.dat-old",
    "var/log/apt",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
)
TRIM_GLOBS = (
    "usr/lib/python3/dist-packages/numpy/*/tests",
    "usr/lib/python3/dist-packages/numpy/tests",
    "usr/lib/python3/dist-packages/PIL/*.pyi",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/ensurepip",
)


@dataclass(frozen=True)
class DebianInputs:
    """Everything that decides the cached Debian tree's content."""

    packages: tuple[str, ...]
    module_patterns: tuple[str, ...]
    mmdebstrap_version: str
    suite: str = SUITE
    mirror: str = MIRROR

    def key(self) -> str:
        """Short hash naming the cache entry."""
        text = "\n".join(
            [
                f"suite={self.suite}",
                f"mirror={self.mirror}",
                f"mmdebstrap={self.mmdebstrap_version}",
                f"trim={TRIM_VERSION}",
                "packages=" + ",".join(self.packages),
                "modules=" + ",".join(self.module_patterns),
                "excludes=" + ",".join(DPKG_EXCLUDES),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_list(path: Path) -> tuple[str, ...]:
    """Non-comment lines of a package list."""
    return tuple(kmods.read_patterns(path))


def inputs(source: Path) -> DebianInputs:
    """The inputs from ``image/packages.txt``, ``image/kernel-modules.txt`` and the host's mmdebstrap."""
    version = run(["mmdebstrap", "--version"], what="mmdebstrap --version").strip()
    return DebianInputs(
        packages=read_list(source / "image/packages.txt"),
        module_patterns=tuple(kmods.read_patterns(source / "image/kernel-modules.txt")),
        mmdebstrap_version=version,
    )


@dataclass(frozen=True)
class CachedDebian:
    """A verified cache entry."""

    tar: Path
    packages_file: Path  # "name\tversion\tarch" lines
    key: str


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path, Path]:
    base = cache_dir / f"debian-{key}"
    return base.with_suffix(".tar"), base.with_suffix(".sha256"), base.with_suffix(".packages")


def lookup(cache_dir: Path, key: str) -> CachedDebian | None:
    """The cache entry for ``key`` if present and intact; a corrupt one is deleted."""
    tar, sums, pkgs = _paths(cache_dir, key)
    if not (tar.is_file() and sums.is_file() and pkgs.is_file()):
        return None
    expected = sums.read_text(encoding="ascii").split()[0]
    if sha256_file(tar) != expected:
        log.warning("cache %s is corrupt (checksum mismatch): removing it and rebuilding", tar.name)
        for p in (tar, sums, pkgs):
            p.unlink(missing_ok=True)
        return None
    return CachedDebian(tar, pkgs, key)


def verify(entry: CachedDebian) -> None:
    """Raise :class:`CacheError` if the entry changed since :func:`lookup`."""
    _tar, sums, _pkgs = _paths(entry.tar.parent, entry.key)
    if sha256_file(entry.tar) != sums.read_text(encoding="ascii").split()[0]:
        raise CacheError(f"{entry.tar} is corrupt", "delete build/cache and build again")


def trim(root: Path, module_patterns: list[str]) -> None:
    """Drop what an appliance never uses: apt state, tests, unused kernel modules."""
    for rel in TRIM_PATHS:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            p.mkdir()
        else:
            p.unlink(missing_ok=True)
    for pattern in TRIM_GLOBS:
        for p in root.glob(pattern):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    kept, removed = kmods.trim(root, module_patterns)
    kver = kmods.kernel_version(root)
    run(["chroot", root, "/usr/sbin/depmod", "-a", kver], what="depmod")
    log.info("kernel modules: kept %d, removed %d", kept, removed)
    compile_optimized(root, [Path("usr/lib/python3.11"), Path("usr/lib/python3/dist-packages")])


def compile_optimized(root: Path, dirs: list[Path]) -> None:
    """Write ``-OO`` byte code (``.opt-2.pyc``) next to Debian's own for ``dirs`` (relative to ``root``).

    The device runs Python with ``PYTHONOPTIMIZE=2`` (see fieldbox-init): without
    docstrings the services hold ~5 MiB less between them (numpy alone 2.3 MiB).
    The read-only root cannot cache byte code at run time, so every module the
    device imports must have its ``.opt-2.pyc`` here, or it is compiled from
    source at every start. The host's python writes them when it is 3.11 (byte
    code is the same on every architecture); otherwise the device's, through qemu-user.
    """
    if sys.version_info[:2] == (3, 11):
        cmd: list[str | Path] = [sys.executable, "-m", "compileall", "-q", "-j", "0", "-o", "2",
                                 "-s", str(root), "-p", "/", *(root / d for d in dirs)]  # fmt: skip
    else:
        cmd = ["chroot", root, "/usr/bin/python3", "-m", "compileall", "-q", "-o", "2",
               *("/" + str(d) for d in dirs)]  # fmt: skip
    # compileall goes on past a file it cannot compile (Python 2 test data in the
    # stdlib) and exits 1 at the end: such a file cannot be imported anyway.
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    bad = [ln for ln in done.stdout.splitlines() if ln.startswith("*** Error compiling")]
    if done.returncode != 0 and not bad:
        raise ImageError(f"compiling optimized python byte code failed: {done.stderr.strip()[-300:]}")
    if bad:
        log.info("optimized byte code: %d file(s) do not compile (not importable anyway)", len(bad))


def build(source: Path, cache_dir: Path, work_dir: Path) -> CachedDebian:
    """Return the cached Debian tree for the current inputs, building it if needed."""
    ins = inputs(source)
    key = ins.key()
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = lookup(cache_dir, key)
    if found is not None:
        log.info("debian rootfs: cached (%s)", found.tar.name)
        return found
    started = time.monotonic()
    log.info("debian rootfs: mmdebstrap %s arm64, %d packages (~3-5 min)", ins.suite, len(ins.packages))
    root = work_dir / f"debian-{key}"
    if root.exists():
        shutil.rmtree(root)
    work_dir.mkdir(parents=True, exist_ok=True)
    cmd: list[str | Path] = [
        "mmdebstrap",
        "--mode=root",
        "--arch=arm64",
        "--variant=minbase",
        "--format=directory",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--include=" + ",".join(ins.packages),
    ]
    cmd += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    cmd += [ins.suite, root, ins.mirror]
    run(cmd, what="mmdebstrap", env={"INITRD": "No", "LC_ALL": "C.UTF-8"}, stream=True)
    trim(root, list(ins.module_patterns))
    tar, sums, pkgs = _paths(cache_dir, key)
    listing = run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
         "-f", "${Package}\t${Version}\t${Architecture}\n"],
        what="dpkg-query",
    )
    tmp = tar.with_suffix(".tar.partial")
    run(["tar", "-C", root, "--numeric-owner", "--xattrs", "-cf", tmp, "."], what="tar of the debian rootfs")
    digest = sha256_file(tmp)
    pkgs.write_text(listing, encoding="utf-8")
    tmp.rename(tar)
    sums.write_text(f"{digest}  {tar.name}\n", encoding="ascii")
    shutil.rmtree(root)
    log.info("debian rootfs: built in %.0f s, cached as %s", time.monotonic() - started, tar.name)
    return CachedDebian(tar, pkgs, key)


def extract(entry: CachedDebian, dest: Path) -> None:
    """Unpack the cached tree into an empty ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    run(["tar", "-C", dest, "--numeric-owner", "--xattrs", "-xpf", entry.tar],
        what="unpacking the debian cache")
