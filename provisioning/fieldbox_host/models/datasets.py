"""The labelled data our models learn from: intents we wrote, digits scikit-learn ships.

Intents (``data/intents.tsv`` for training, ``data/intents_heldout.tsv`` for
the held-out score): short English requests an edge box hears from operators,
in five classes. The held-out sentences were written separately, with other
wording, so their score says how the model does on phrasing it has not seen.
Format: ``label<TAB>text`` per line; ``#`` starts a comment line.

Digits: the UCI optical handwritten digits as scikit-learn bundles them
(``digits.csv.gz``: 1797 rows of 64 pixels 0..16 and the label), taken out of
the pinned wheel by :mod:`fieldbox_host.assets`. Pixels are mapped to 0..255
grey levels (``round(v * 255 / 16)``), exactly what a PNG of the digit holds,
so the model is trained on what the image-classifier kind will feed it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fieldbox.errors import FieldboxError

DATA_DIR = Path(__file__).resolve().parent / "data"
INTENT_LABELS: tuple[str, ...] = ("alarm", "config", "greeting", "maintenance", "status")
"""Class N of the intent model is ``INTENT_LABELS[N]``."""
DIGIT_LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))


class DatasetError(FieldboxError):
    """A dataset file is missing or malformed."""


@dataclass(frozen=True)
class TextSet:
    """Labelled sentences."""

    texts: tuple[str, ...]
    labels: npt.NDArray[np.int64]


def load_intents(path: Path) -> TextSet:
    """Read a ``label<TAB>text`` file; unknown labels and malformed lines are errors."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from None
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        label, sep, text = line.partition("\t")
        if not sep or not text.strip():
            raise DatasetError(f"{path}:{number}: expected 'label<TAB>text'")
        if label not in INTENT_LABELS:
            raise DatasetError(f"{path}:{number}: unknown label {label!r}", f"known: {INTENT_LABELS}")
        texts.append(text.strip())
        labels.append(INTENT_LABELS.index(label))
    if not texts:
        raise DatasetError(f"{path}: no examples")
    return TextSet(tuple(texts), np.array(labels, dtype=np.int64))


@dataclass(frozen=True)
class ImageSet:
    """Grey images ``[n, h, w]`` (uint8, 0..255) with integer labels."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]

    def subset(self, index: npt.NDArray[np.int64]) -> ImageSet:
        """The rows at ``index``."""
        return ImageSet(self.images[index], self.labels[index])


def load_digits(path: Path) -> ImageSet:
    """Read scikit-learn's ``digits.csv.gz`` into 8x8 grey images (0..255) and labels."""
    try:
        text = gzip.decompress(path.read_bytes()).decode("ascii")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read digits: {exc}", "run `make assets` again") from None
    rows = [line.split(",") for line in text.splitlines() if line.strip()]
    if not rows or any(len(r) != 65 for r in rows):
        raise DatasetError(f"{path}: expected rows of 64 pixels and a label")
    values = np.array(rows, dtype=np.int64)
    pixels = values[:, :64]
    if pixels.min() < 0 or pixels.max() > 16:
        raise DatasetError(f"{path}: pixel values outside 0..16")
    grey = np.round(pixels * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8)
    return ImageSet(grey, values[:, 64])


def split(n: int, held_out: float, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A seeded shuffle of ``range(n)`` cut into (train, held-out) index arrays."""
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    cut = int(round(n * held_out))
    return np.sort(order[cut:]), np.sort(order[:cut])
