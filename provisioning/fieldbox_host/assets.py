"""Real models and real test images, taken out of pinned PyPI wheels.

Nothing is fetched from a model hub: the BlazeFace detector ships inside the
mediapipe 0.10.14 wheel (Apache-2.0) and the test photographs inside the
scikit-image 0.26.0 wheel (BSD-3-Clause; the images' own licences are listed in
that wheel). Each wheel is downloaded once with ``pip download`` into a cache,
the one member we need is extracted, and its sha256 is checked against the
value pinned here, so a changed upstream file is a loud error, not a silent
change of test data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fieldbox.durable import atomic_write
from fieldbox.errors import FieldboxError


@dataclass(frozen=True)
class Asset:
    """One file inside a pinned wheel."""

    name: str
    requirement: str
    member: str
    sha256: str


_MEDIAPIPE = "mediapipe==0.10.14"
_SKIMAGE = "scikit-image==0.26.0"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "face_detection_short_range.tflite",
            _MEDIAPIPE,
            "mediapipe/modules/face_detection/face_detection_short_range.tflite",
            "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        ),
        Asset(
            "palm_detection_lite.tflite",
            _MEDIAPIPE,
            "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
            "e9a4aaddf90dda56a87235303cf00e4c2d3fb28725f68fd88772997dac905c18",
        ),
        *(
            Asset(name, _SKIMAGE, f"skimage/data/{name}", digest)
            for name, digest in (
                ("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
                ("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
                ("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
                ("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
                ("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
                (
                    "motorcycle_left.png",
                    "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
                ),
                (
                    "hubble_deep_field.jpg",
                    "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
                ),
                ("retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
                ("brick.png", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
                ("grass.png", "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89"),
                ("coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
                ("horse.png", "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455"),
            )
        ),
        # UCI optical handwritten digits (1797 8x8 images, 0-16) as scikit-learn ships them (BSD-3-Clause).
        Asset(
            "digits.csv.gz",
            "scikit-learn==1.6.1",
            "sklearn/datasets/data/digits.csv.gz",
            "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
        ),
    )
}


class AssetError(FieldboxError):
    """An asset could not be downloaded, found in its wheel, or verified."""


def cache_dir() -> Path:
    """Where downloaded wheels are kept: ``$FIELDBOX_CACHE`` or ``~/.cache/fieldbox``."""
    env = os.environ.get("FIELDBOX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fieldbox"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel(requirement: str) -> Path:
    """The cached wheel for ``requirement`` (``name==version``), downloading it once."""
    name, version = requirement.split("==")
    wheels = cache_dir() / "wheels"
    prefix = f"{name.replace('-', '_')}-{version}-".lower()
    for candidate in sorted(wheels.glob("*.whl")):
        if candidate.name.lower().startswith(prefix):
            return candidate
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"fieldbox: downloading {requirement} (once, into {wheels})", file=sys.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(wheels), requirement],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(
            f"cannot download {requirement}: {last}", "check access to the package registry"
        )
    for candidate in sorted(wheels.glob("*.whl")):
        if candidate.name.lower().startswith(prefix):
            return candidate
    raise AssetError(f"pip downloaded no wheel for {requirement}")


def fetch(name: str, dest_dir: Path) -> Path:
    """Return ``dest_dir/name``, extracting and verifying it from its wheel if needed."""
    try:
        asset = ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}", f"known: {', '.join(sorted(ASSETS))}") from None
    dest = Path(dest_dir) / name
    if dest.exists() and _sha256(dest) == asset.sha256:
        return dest
    wheel = _wheel(asset.requirement)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(asset.member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        wheel.unlink(missing_ok=True)
        raise AssetError(
            f"{wheel.name}: cannot read {asset.member}: {exc}", "run again to re-download"
        ) from None
    got = hashlib.sha256(data).hexdigest()
    if got != asset.sha256:
        raise AssetError(
            f"{asset.member} from {wheel.name} has sha256 {got}, expected {asset.sha256}",
            "the pinned wheel changed upstream; do not trust it",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, data)
    return dest


def fetch_all(dest_dir: Path) -> list[Path]:
    """Fetch every asset into ``dest_dir``."""
    return [fetch(name, dest_dir) for name in ASSETS]


def copy_into(name: str, dest_dir: Path, target: Path) -> Path:
    """Fetch ``name`` and copy it to ``target`` (for laying into an image)."""
    src = fetch(name, dest_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return target


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/assets")
    for path in fetch_all(out):
        print(path)
