"""Image classifier: one image in, class scores out, top-k with labels.

Works for float and quantized (int8/uint8) models alike: inputs are quantized
and outputs dequantized with the model's own scale and zero point, so a
manifest's mean/std and thresholds are in real units either way.
``postprocess.kind`` says what the output holds: ``scores`` (probabilities,
used as they are) or ``logits`` (a softmax is applied); ``postprocess.softmax``
overrides that. The label of class *i* is line *i* of the labels file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fieldbox.agents.base import Prepared
from fieldbox.agents.image import ImageGeometry, dequantize, prepare_image
from fieldbox.agents.interpreter import Array, Interpreter, TensorDetail
from fieldbox.agents.manifest import AgentManifest
from fieldbox.errors import ConfigError, ModelError


def read_labels(path: Path) -> list[str]:
    """Labels, one per line (trailing blank lines ignored); ConfigError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read labels: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: labels file is not UTF-8 text") from None
    labels = text.splitlines()
    while labels and not labels[-1].strip():
        labels.pop()
    return [label.strip() for label in labels]


def softmax(values: Array) -> Array:
    """Numerically stable softmax over the last axis."""
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: Array = exp / exp.sum(axis=-1, keepdims=True)
    return out


def class_count(detail: TensorDetail) -> int:
    """Number of classes in a [N] or [1, N] output; ModelError for other shapes."""
    dims = [d for d in detail.shape]
    if len(dims) == 2 and dims[0] == 1:
        return dims[1]
    if len(dims) == 1:
        return dims[0]
    raise ModelError(f"output {detail.name!r} has shape {dims}; a classifier needs [1, classes] or [classes]")


def top_classes(scores: Array, labels: list[str] | None, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` best classes, best first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    out = []
    for index in order:
        score = float(scores[index])
        label = labels[index] if labels is not None else str(int(index))
        out.append({"index": int(index), "label": label, "score": round(score, 6)})
    return out


class ImageClassifier:
    """Agent kind ``image-classifier``."""

    kind_name = "image-classifier"

    def __init__(self, manifest: AgentManifest, interpreter: Interpreter) -> None:
        post = manifest.postprocess
        if post.kind not in ("default", "scores", "logits"):
            raise ConfigError(
                f"postprocess.kind {post.kind!r} is not one the image classifier knows ('scores', 'logits')"
            )
        inputs = interpreter.input_details()
        if len(inputs) != 1:
            raise ModelError(f"an image classifier needs a model with 1 input, this one has {len(inputs)}")
        self._input = inputs[0]
        self._pre = manifest.preprocess
        self._geometry = ImageGeometry.of(self._input, self._pre.layout)
        self._output = interpreter.output_details()[0]
        self.num_classes = class_count(self._output)
        self._softmax = post.softmax if post.softmax is not None else post.kind == "logits"
        self._top_k = post.top_k
        self._min_score = post.min_score
        self.labels: list[str] | None = None
        if manifest.labels is not None:
            labels = read_labels(manifest.resolve(manifest.labels, "labels file"))
            if len(labels) != self.num_classes:
                raise ConfigError(
                    f"labels file {manifest.labels} has {len(labels)} labels, the model has "
                    f"{self.num_classes} classes"
                )
            self.labels = labels

    def preprocess(self, data: bytes) -> Prepared:
        """Decode, resize and normalise one image."""
        tensor, placement = prepare_image(data, self._input, self._geometry, self._pre)
        return Prepared([tensor], {"placement": placement})

    def scores(self, outputs: list[Array]) -> Array:
        """Real-valued class scores (dequantized, softmax applied when configured)."""
        values = dequantize(outputs[0], self._output).reshape(self.num_classes)
        return softmax(values) if self._softmax else values

    def postprocess(self, outputs: list[Array], prepared: Prepared) -> dict[str, Any]:
        """Top-k classes with labels; ``label`` is the best one, or None when it scores below min_score.

        The same result shape as the text classifier, so workflows treat both alike.
        """
        top = top_classes(self.scores(outputs), self.labels, self._top_k)
        best = top[0]
        return {
            "label": best["label"] if best["score"] >= self._min_score else None,
            "score": best["score"],
            "top_k": top,
        }
