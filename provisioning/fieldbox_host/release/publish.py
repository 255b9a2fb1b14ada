"""``fieldbox release IMAGE``: a built image's root slot -> update bundle -> signed TUF target.

The image's build manifest (``<name>.manifest.json`` beside it, written by
``fieldbox build``) says its version, board, build time and where slot A lies;
the bundle is cut from slot A's partition, written into the repository under
its consistent-snapshot name, checked by the device's own reader, and only
then added to the targets metadata (targets, snapshot, timestamp re-signed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldbox.ota import bundle
from fieldbox.ota.release import ReleaseInfo, target_path, valid_board
from fieldbox.ota.version import is_version, newer
from fieldbox_host.release.errors import ReleaseError
from fieldbox_host.release.repository import Published, Repository


@dataclass(frozen=True)
class ImageFacts:
    """What the build manifest says about an image."""

    image: Path
    version: str
    board: str
    built: int
    root_offset: int
    root_size: int
    store_min_reader: int = 1


def manifest_path(image: Path) -> Path:
    """``fieldbox-0.2.0-arm64.img`` -> ``fieldbox-0.2.0-arm64.manifest.json``."""
    name = image.name.removesuffix(".zst").removesuffix(".img")
    return image.with_name(f"{name}.manifest.json")


def image_facts(image: Path) -> ImageFacts:
    """Read the build manifest beside ``image``; one-line errors for anything missing."""
    if image.name.endswith(".zst"):
        raise ReleaseError(
            f"{image} is compressed", "give the raw .img that `fieldbox build` wrote beside it"
        )
    if not image.is_file():
        raise ReleaseError(f"{image}: no such image", "build it first with `fieldbox build`")
    man = manifest_path(image)
    try:
        doc: dict[str, Any] = json.loads(man.read_text(encoding="utf-8"))
        version, board = doc["version"], doc["board"]
        root = next(p for p in doc["partitions"] if p["name"] == "rootA")
        built = int(doc.get("source_date_epoch", 0))
        reader = int(doc.get("store_min_reader", 1))
        offset, size = int(root["start_mib"]) << 20, int(root["size_mib"]) << 20
    except FileNotFoundError:
        raise ReleaseError(
            f"{man} is missing",
            "release an image as `fieldbox build` wrote it, with its " "manifest beside it",
        ) from None
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise ReleaseError(f"{man} is not a fieldbox build manifest: {exc}") from None
    if not is_version(version):
        raise ReleaseError(
            f"{man}: version {version!r} is not a release version", "build with --image-version X.Y.Z"
        )
    if not valid_board(board):
        raise ReleaseError(f"{man}: board {board!r} cannot be released (a disk image board is needed)")
    if image.stat().st_size < offset + size:
        raise ReleaseError(f"{image} is shorter than its partition table says", "rebuild it")
    return ImageFacts(image, version, board, built, offset, size, reader)


def release_image(
    image: Path,
    repo: Repository,
    signers: dict[str, Any],
    *,
    compatible_from: str | None = None,
    min_version: str | None = None,
    progress: bundle.Progress | None = None,
) -> Published:
    """Publish ``image``'s root slot as a release of ``repo``; return the new target."""
    repo.require()
    facts = image_facts(image)
    for name, value in (("--compatible-from", compatible_from), ("--min-version", min_version)):
        if value is not None and not is_version(value):
            raise ReleaseError(f"{name} {value!r} is not a release version", "e.g. 0.1.0")
        if value is not None and newer(value, facts.version):
            raise ReleaseError(f"{name} {value} is newer than the release itself ({facts.version})")
    path = target_path(facts.board, facts.version)
    for old in repo.releases():
        if old.info.board == facts.board and not newer(facts.version, old.info.version):
            raise ReleaseError(
                f"{facts.board} {old.info.version} is already published; {facts.version} is not newer",
                "devices never install an older or equal version: build with a higher --image-version",
            )
    staging = repo.targets_dir / Path(path).parent
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f".{Path(path).name}.{os.getpid()}.new"
    try:
        with open(image, "rb") as src:
            src.seek(facts.root_offset)
            written = bundle.write_bundle(
                src,
                facts.root_size,
                tmp,
                version=facts.version,
                board=facts.board,
                built=facts.built,
                progress=progress,
            )
        bundle.verify_bundle(tmp)  # the device's reader, on every chunk, before anything is signed
        info = ReleaseInfo(
            facts.version,
            facts.board,
            written.manifest_length,
            written.manifest_sha256,
            compatible_from,
            min_version,
            facts.store_min_reader,
        )
        published = Published(path, written.length, written.sha256, info)
        final = repo.target_file(path, written.sha256)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    repo.add_target(published, signers)
    return published
