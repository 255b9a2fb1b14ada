"""``fieldbox build``: the whole image build, cheapest checks first.

Order: board name and host checks (one line and exit before any long work),
the cached Debian tree (mmdebstrap only when its inputs changed), the arm64
``.deb`` files and wheels (cached), the staged root filesystem with fieldbox,
our initramfs, then the disk image. Outputs are written under temporary names
and renamed at the end, so an interrupted build never leaves a file that looks
like a finished image.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldbox import __version__
from fieldbox.store import migrations
from fieldbox_host.image import (
    accounts,
    boards,
    bootpart,
    debian,
    debs,
    disk,
    hostcheck,
    initramfs,
    kmods,
    layout,
    manifest,
    rootfs,
    wheels,
)
from fieldbox_host.image.errors import ImageError
from fieldbox_host.image.proc import run, sha256_file, source_dir

log = logging.getLogger("fieldbox.image")

EXTRA_DEBS = ("busybox-static", "raspi-firmware", "u-boot-rpi")


@dataclass(frozen=True)
class BuildOptions:
    """What to build and where."""

    board: str = "qemu-arm64"
    build_dir: Path = Path("build")
    version: str = __version__
    debug_shell: bool = False
    """A login-free root shell on the virtio console (hvc0) for tests that need one; never for users."""
    slot_b: str = "copy"  # "copy": slot B holds the same root as A; "empty": blank until an update
    compress: bool = True
    repo: Path | None = None
    """A TUF repository (``fieldbox keys init --repo``): its newest root is baked into the image."""
    update_url: str = ""
    """The repository's URL as the device reaches it (``ota.toml`` repository_url)."""
    sync_url: str = ""
    """The ingest server (``sync.toml`` server_url)."""
    overlay: Path | None = None
    """A directory laid over the root filesystem last (site config, agents, models)."""
    output_dir: Path | None = None
    """Where the image files go (default: ``build_dir``); the caches stay in ``build_dir``."""
    source_date_epoch: int | None = None
    """File times and the build time; default ``$SOURCE_DATE_EPOCH``, else the last commit's time."""


@dataclass
class BuildResult:
    """What a build produced, and how long its steps took."""

    board: str
    version: str
    image: Path | None = None
    compressed: Path | None = None
    checksum: Path | None = None
    manifest: Path | None = None
    tarball: Path | None = None
    image_bytes: int = 0
    compressed_bytes: int = 0
    root_used_bytes: int = 0
    partitions: list[layout.Partition] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def image_name(version: str, debug_shell: bool = False) -> str:
    """``fieldbox-<version>-arm64``, or ``...-arm64-debug`` for an image with the debug shell."""
    return f"fieldbox-{version}-arm64" + ("-debug" if debug_shell else "")


def models(build_dir: Path) -> list[tuple[Path, str]]:
    """The files the image carries in its models directory, as (source, relative name).

    The face detector asset, plus every file the shipped manifests name from
    ``build/models`` (models, labels, feature config, self-test samples), as
    listed by :func:`fieldbox_host.models.build.device_files`.
    """
    from fieldbox_host.models.build import device_files

    face = build_dir / "assets/face_detection_short_range.tflite"
    if not face.is_file():
        raise ImageError(f"{face} is missing", "run `make assets` first")
    built = build_dir / "models"
    files = [(face, face.name)]
    for name in device_files(built):
        if not (built / name).is_file():
            raise ImageError(f"{built / name} is missing", "run `make models` first")
        files.append((built / name, name))
    return files


class _Timer:
    def __init__(self, result: BuildResult) -> None:
        self.result = result

    def step(self, name: str, func: Callable[[], Any]) -> Any:
        started = time.monotonic()
        log.info("== %s", name)
        value = func()
        self.result.seconds[name] = round(time.monotonic() - started, 1)
        return value


Staged = tuple[Path, debian.CachedDebian, list[wheels.Wheel], dict[str, Path]]


def build_epoch(opts: BuildOptions, source: Path) -> int:
    """SOURCE_DATE_EPOCH: given, from the environment, the last commit's time, or now."""
    if opts.source_date_epoch is not None:
        return opts.source_date_epoch
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    if env.isdigit():
        return int(env)
    try:
        out = subprocess.run(["git", "-C", str(source), "log", "-1", "--format=%ct"], capture_output=True,
                             text=True, check=False, timeout=10)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip().isdigit():
            return int(out.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return int(time.time())


def trusted_root(opts: BuildOptions) -> bytes | None:
    """The newest root metadata of ``opts.repo`` (checked before any long work)."""
    if opts.repo is None:
        return None
    metadata = opts.repo / "metadata"
    versions = sorted(int(p.name.split(".")[0]) for p in metadata.glob("*.root.json") if p.name[0].isdigit())
    if not versions:
        raise ImageError(f"{opts.repo} is not an update repository (no metadata/N.root.json)",
                         "create it with `fieldbox keys init --repo DIR`")  # fmt: skip
    return (metadata / f"{versions[-1]}.root.json").read_bytes()


def stage_root(opts: BuildOptions, source: Path, work: Path, timer: _Timer) -> Staged:
    """The complete root filesystem tree in ``work/rootfs`` (+ cache entry, wheels, extra debs)."""
    cache = opts.build_dir / "cache"
    base: debian.CachedDebian = timer.step("debian rootfs", lambda: debian.build(source, cache, work))
    extra: dict[str, Path] = timer.step("arm64 debs", lambda: debs.fetch(list(EXTRA_DEBS), cache))
    whl: list[wheels.Wheel] = timer.step("wheels", lambda: wheels.fetch(source, cache))
    root = work / "rootfs"
    epoch = build_epoch(opts, source)
    timer.step("unpack cache", lambda: debian.extract(base, root))

    def lay_in() -> None:
        wheels.install(whl, root)
        rootfs.install_fieldbox(source, root)
        rootfs.install_models(models(opts.build_dir), root)
        rootfs.copy_overlay(source / "rootfs-overlay", root)
        if opts.overlay is not None:
            rootfs.copy_overlay(opts.overlay, root)
        rootfs.configure_updates(root, trusted_root(opts), opts.update_url)
        if opts.sync_url:
            rootfs.set_toml_key(root / "etc/fieldbox/sync.toml", "server_url", opts.sync_url)
        rootfs.redirect_writable(root)
        accounts.install(root, accounts.load(source / "image/users.txt"), epoch)
        rootfs.write_identity(root, rootfs.RootOptions(opts.version, opts.debug_shell, opts.board, epoch))
        rootfs.place_kernel(root)
        initrd = initramfs.build(root, extra["busybox-static"], source / "image/initramfs/init")
        (root / "boot/initrd.img").write_bytes(initrd)
        rootfs.compile_python(root)

    timer.step("fieldbox + overlay + initramfs", lay_in)
    timer.step("import check (qemu-user)", lambda: rootfs.smoke_import(root))
    timer.step("readahead list (qemu-user)", lambda: rootfs.write_readahead_list(root))
    timer.step("file times", lambda: rootfs.clamp_times(root, epoch))
    return root, base, whl, extra


def build_image(opts: BuildOptions) -> BuildResult:
    """Build what ``opts.board`` needs; see the module docstring for the order."""
    board = boards.board(opts.board)
    if opts.slot_b not in ("copy", "empty"):
        raise ImageError(f"slot B mode {opts.slot_b!r} is unknown", "use copy or empty")
    source = source_dir()
    hostcheck.check_build_host(opts.build_dir)
    models(opts.build_dir)  # fail now, not after the rootfs
    trusted_root(opts)
    if opts.overlay is not None and not opts.overlay.is_dir():
        raise ImageError(f"overlay {opts.overlay} is not a directory")
    if opts.update_url and not opts.update_url.startswith(("http://", "https://")):
        raise ImageError(f"update URL {opts.update_url!r} must start with http:// or https://")
    if opts.update_url and opts.repo is None:
        raise ImageError("--update-url without --repo: the image would trust no repository",
                         "give --repo DIR (the repository whose root the devices trust)")  # fmt: skip
    with _build_lock(opts.build_dir):
        return _build_locked(opts, board, source)


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """One build at a time per build directory (they share work/ and cache/)."""
    with open(build_dir / ".build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImageError(
                f"another build is running in {build_dir}", "wait for it, or use another --build-dir"
            ) from None
        yield


def _build_locked(opts: BuildOptions, board: boards.Board, source: Path) -> BuildResult:
    result = BuildResult(board=board.name, version=opts.version)
    timer = _Timer(result)
    started = time.monotonic()
    work = opts.build_dir / "work"
    root, base, whl, extra = stage_root(opts, source, work, timer)
    name = image_name(opts.version, opts.debug_shell)
    if board.output == "tarball":
        result.tarball = timer.step("jetson tarball", lambda: _tarball(opts, root, name))
    else:
        timer.step("disk image", lambda: _disk(opts, source, root, work, base, whl, extra, result))
    result.seconds["total"] = round(time.monotonic() - started, 1)
    return result


def _tarball(opts: BuildOptions, root: Path, name: str) -> Path:
    """Jetson: the root filesystem for L4T's ``Linux_for_Tegra/rootfs``.

    L4T brings its own kernel, modules, initrd and bootloader (``apply_binaries.sh``,
    ``flash.sh``), so Debian's kernel and modules are left out, and ``/sbin/init``
    points at our PID 1 (L4T's extlinux boots the rootfs' ``/sbin/init``).
    """
    for p in (root / "boot").glob("*"):
        if p.is_file() or p.is_symlink():
            p.unlink()
    modules = root / "usr/lib/modules"
    if modules.exists():
        shutil.rmtree(modules)
    modules.mkdir()
    init = root / "usr/sbin/init"
    init.unlink(missing_ok=True)
    init.symlink_to("fieldbox-init")
    out = opts.build_dir / f"{name}-jetson-rootfs.tar.zst"
    tmp = out.with_name(out.name + ".partial")
    run(["tar", "-C", root, "--numeric-owner", "--xattrs", "--zstd", "-cf", tmp, "."],
        what="jetson rootfs tarball")
    tmp.rename(out)
    return out


def _disk(
    opts: BuildOptions,
    source: Path,
    root: Path,
    work: Path,
    base: debian.CachedDebian,
    whl: list[wheels.Wheel],
    extra: dict[str, Path],
    result: BuildResult,
) -> None:
    parts = layout.partitions()
    result.partitions = parts
    fs_dir = work / "fs"
    fs_dir.mkdir(parents=True, exist_ok=True)
    unpacked = work / "debs"
    if unpacked.exists():
        shutil.rmtree(unpacked)
    for pkg in ("raspi-firmware", "u-boot-rpi"):
        debs.unpack(extra[pkg], unpacked / pkg)
    boot = {
        **bootpart.pi_files(source, root, unpacked / "raspi-firmware", unpacked / "u-boot-rpi"),
        **bootpart.slot_files(work / "bootfiles", opts.board),
    }
    boot_fs = fs_dir / "boot.vfat"
    disk.make_fat(boot_fs, parts[0].size_mib, boot)
    root_fs = fs_dir / "root.ext4"
    epoch = build_epoch(opts, source)
    disk.make_ext4(root_fs, parts[1].size_mib, root, "fieldbox-root", epoch)
    result.root_used_bytes = disk.used_bytes_ext4(root_fs)
    contents = {1: boot_fs, 2: root_fs}
    if opts.slot_b == "copy":
        contents[3] = root_fs
    name = image_name(opts.version, opts.debug_shell)
    out_dir = opts.output_dir or opts.build_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.img"
    zst = out.with_name(out.name + ".zst")
    sums = out.with_name(out.name + ".sha256")
    man = out_dir / f"{name}.manifest.json"
    for stale in (out, zst, sums, man):
        stale.unlink(missing_ok=True)
    tmp = out.with_name(out.name + ".partial")
    disk.assemble(tmp, parts, contents)
    table = disk.read_table(tmp, out.name)
    digests = {out.name: sha256_file(tmp)}
    if opts.compress:
        ztmp = zst.with_name(zst.name + ".partial")
        run(["zstd", "-q", "-f", "-T0", "-3", tmp, "-o", ztmp], what="zstd")
        digests[zst.name] = sha256_file(ztmp)
        ztmp.rename(zst)
        result.compressed = zst
        result.compressed_bytes = zst.stat().st_size
    kver = kmods.kernel_version(root)
    manifest.write(man, {
        "name": name,
        "version": opts.version,
        "board": opts.board,
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source_date_epoch": epoch,
        "store_schema": migrations.LATEST,
        "store_min_reader": migrations.MIN_READER,
        "trusted_root": opts.repo is not None,
        "update_url": opts.update_url,
        "kernel": kver,
        "debug_shell": opts.debug_shell,
        "slot_b": opts.slot_b,
        "debian_cache": base.tar.name,
        "debian_suite": debian.SUITE,
        "debian_packages": manifest.debian_packages(base.packages_file),
        "extra_debs": {p: debs.version(d) for p, d in extra.items()},
        "wheels": [{"name": w.name, "version": w.version, "file": w.path.name} for w in whl],
        "models": [name for _, name in models(opts.build_dir)],
        "initramfs_modules": initramfs.module_order(root),
        "boot_partition": sorted(boot),
        "partitions": manifest.partitions_record(parts),
        "partition_table": table,
        "root_used_bytes": result.root_used_bytes,
        "sha256": digests,
    })  # fmt: skip
    sums.write_text("".join(f"{d}  {n}\n" for n, d in digests.items()), encoding="ascii")
    tmp.rename(out)  # last: only a complete image carries the final name
    result.image, result.checksum, result.manifest = out, sums, man
    result.image_bytes = out.stat().st_size


def summary(result: BuildResult) -> str:
    """What a build made and what to do next, for the terminal."""
    mib = 1024 * 1024
    lines = [f"fieldbox {result.version} for {result.board}: built in {result.seconds.get('total', 0):.0f} s"]
    if result.tarball is not None:
        size = result.tarball.stat().st_size / mib
        lines += [
            f"  rootfs tarball  {result.tarball}  ({size:.0f} MiB)",
            "  next: unpack it into L4T's Linux_for_Tegra/rootfs, flash with NVIDIA's flash.sh (see README)",
        ]
        return "\n".join(lines)
    lines.append(f"  image       {result.image}  ({result.image_bytes / mib:.0f} MiB)")
    if result.compressed is not None:
        lines.append(f"  compressed  {result.compressed}  ({result.compressed_bytes / mib:.0f} MiB)")
    lines += [
        f"  checksums   {result.checksum}",
        f"  manifest    {result.manifest}",
        f"  root slot used {result.root_used_bytes / mib:.0f} MiB; boots slot A",
        "  partitions:",
    ]
    for p in result.partitions:
        lines.append(
            f"    p{p.number} {p.name:<6} {p.size_mib:>5} MiB at {p.start_mib:>5} MiB  PARTUUID={p.partuuid}"
        )
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items() if k != "total")
    lines += [
        f"  steps: {steps}",
        "  next: make emulate                  (boot it under QEMU, console here; Ctrl-A X quits)",
        (f"        zstdcat {result.compressed} | dd of=/dev/sdX bs=4M conv=fsync" if result.compressed else
         f"        dd if={result.image} of=/dev/sdX bs=4M conv=fsync")
        + "   (write it to an SD card; `fieldbox flash` is not written yet)",
    ]
    return "\n".join(lines)
