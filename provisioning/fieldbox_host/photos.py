"""Distinct real photographs for workflow tests and the workflow benchmark.

The photographs in ``build/assets/`` (astronaut, camera, coffee, chelsea,
rocket, ...; real images from pinned wheels, see :mod:`fieldbox_host.assets`)
are made into as many distinct items as needed by real image operations:
a random crop, an optional mirror, a resize, saved as JPEG or PNG. Every item
has different bytes, so every one is a separate item for a workflow. A writer
that follows the inbox rule writes ``name.tmp`` and renames it in
(:func:`drop`).
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from fieldbox.durable import fsync_dir

PHOTOS = (
    "astronaut.png",
    "camera.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "horse.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "brick.png",
    "grass.png",
)


def variants(assets: Path, count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` distinct (name, encoded image) pairs made from the photographs in ``assets``."""
    rng = random.Random(seed)
    sources = []
    for name in PHOTOS:
        path = Path(assets) / name
        if path.is_file():
            with Image.open(path) as img:
                sources.append((path.stem, img.convert("RGB")))
    if not sources:
        raise FileNotFoundError(f"no photographs in {assets} (run `make assets`)")
    seen: set[bytes] = set()
    n = 0
    while n < count:
        stem, img = sources[n % len(sources)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        side = rng.choice((160, 224, 256, 320))
        scale = side / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))))
        buf = io.BytesIO()
        fmt = "JPEG" if n % 3 else "PNG"
        if fmt == "JPEG":
            out.save(buf, format=fmt, quality=rng.randint(80, 95))
        else:
            out.save(buf, format=fmt)
        data = buf.getvalue()
        if data in seen:
            continue
        seen.add(data)
        yield f"{n:04d}-{stem}.{'jpg' if fmt == 'JPEG' else 'png'}", data
        n += 1


def drop(inbox: Path, name: str, data: bytes, sync: bool = False) -> Path:
    """Put a file into an inbox the way writers should: write ``name.tmp``, rename to ``name``."""
    tmp = Path(inbox) / f"{name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    final = Path(inbox) / name
    os.replace(tmp, final)
    if sync:
        fsync_dir(Path(inbox))
    return final
