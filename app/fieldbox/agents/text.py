"""The text-classifier agent kind, and the one featurizer its models are trained with.

Text becomes a fixed-size vector by *feature hashing*: the text is normalised
(Unicode NFKC, case-folded, every run of digits replaced by ``0``), split into
word tokens, and every unigram and bigram is hashed (CRC-32, stable across
processes and machines, unlike Python's ``hash``) into one of ``buckets``
slots. A slot is 1 when any n-gram lands in it; the vector is then L2
normalised. There is no vocabulary file to lose or mismatch: the model's
input width *is* the bucket count, and the kind checks it at load.

:func:`featurize` is the single definition of that mapping. The host-side
trainer (``fieldbox_host.models``) imports it from here, so what a model is
trained on and what it sees on the device cannot drift apart.

Manifest (``kind = "text-classifier"``)::

    kind = "text-classifier"
    labels = "intent_labels.txt"
    [model]
    path = "intent_classifier.tflite"      # or intent_classifier_int8.tflite
    sha256 = "..."
    [postprocess]
    kind = "scores"                        # the model ends in SOFTMAX; "logits" applies one
    top_k = 3
    min_score = 0.5                        # below it, "label" is null (not sure)
    [options]                              # the featurizer; defaults match the shipped model
    buckets = 2048
    ngrams = 2

A float32 model takes the vector as is; an int8 model (integer input) gets it
quantized with the model's own input scale and zero point, and its int8 output
is dequantized with the output's, so one manifest shape serves both.

Input: the item's bytes as UTF-8 text. Empty text, text with no words, invalid
UTF-8 or more than ``max_bytes`` bytes raise :class:`~fieldbox.errors.InputError`.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fieldbox import schema
from fieldbox.agents.base import Prepared
from fieldbox.agents.classifier import read_labels, softmax, top_classes
from fieldbox.agents.image import dequantize, quantize
from fieldbox.errors import ConfigError, InputError, ModelError
from fieldbox.schema import doc_field, positive

if TYPE_CHECKING:
    import numpy.typing as npt

    from fieldbox.agents.interpreter import Array, Interpreter
    from fieldbox.agents.manifest import AgentManifest

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_DIGITS = re.compile(r"\d+")


def _ngrams_ok(value: Any) -> str | None:
    return None if 1 <= value <= 3 else "must be 1, 2 or 3"


@dataclass(frozen=True)
class TextFeatures:
    """How text becomes the model's input vector (the manifest's ``[options]`` table)."""

    buckets: int = doc_field(
        "hash buckets = the model's input width (checked at load)", default=2048, check=positive
    )
    ngrams: int = doc_field(
        "longest n-gram hashed: 1 = words, 2 = words and word pairs", default=2, check=_ngrams_ok
    )
    max_bytes: int = doc_field("refuse texts longer than this many bytes", default=65536, check=positive)


def tokenize(text: str) -> list[str]:
    """Word tokens of ``text``: NFKC, case-folded, digit runs as ``0``, punctuation dropped."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [_DIGITS.sub("0", tok) for tok in _TOKEN.findall(folded)]


def ngrams(tokens: Sequence[str], n_max: int) -> list[str]:
    """Every n-gram of ``tokens`` for n = 1..n_max, tagged with n so orders never collide."""
    grams = []
    for n in range(1, n_max + 1):
        for i in range(len(tokens) - n + 1):
            grams.append(f"{n}\x1f" + "\x1f".join(tokens[i : i + n]))
    return grams


def bucket(gram: str, buckets: int) -> int:
    """The hash bucket of one tagged n-gram (CRC-32 of its UTF-8 bytes, mod ``buckets``)."""
    return zlib.crc32(gram.encode("utf-8")) % buckets


def featurize(text: str, features: TextFeatures) -> npt.NDArray[np.float32]:
    """The model input vector ``[buckets]`` (float32, L2 norm 1; all zeros if no words)."""
    vec = np.zeros(features.buckets, dtype=np.float64)
    for gram in ngrams(tokenize(text), features.ngrams):
        vec[bucket(gram, features.buckets)] = 1.0
    norm = float(np.sqrt(np.sum(vec * vec)))
    if norm > 0.0:
        vec /= norm
    return vec.astype(np.float32)


def featurize_many(texts: Iterable[str], features: TextFeatures) -> npt.NDArray[np.float32]:
    """Feature vectors of many texts, one row each (``[n, buckets]``)."""
    rows = [featurize(t, features) for t in texts]
    if not rows:
        return np.zeros((0, features.buckets), dtype=np.float32)
    return np.stack(rows)


def decode_text(data: bytes, max_bytes: int) -> str:
    """An item's bytes as text; :class:`InputError` when it cannot be classified."""
    if len(data) > max_bytes:
        raise InputError(
            f"text is {len(data)} bytes, more than the limit of {max_bytes}",
            "split it, or raise options.max_bytes in the manifest",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"text is not valid UTF-8 (byte {exc.start})", "send UTF-8 text") from None
    if not text.strip():
        raise InputError("text is empty", "send at least one word")
    return text


class TextClassifier:
    """Agent kind ``text-classifier``: UTF-8 text -> label, score and top-k."""

    kind_name: ClassVar[str] = "text-classifier"

    def __init__(self, manifest: AgentManifest, interpreter: Interpreter) -> None:
        # Errors name no file: the runner prefixes the manifest's location to a kind's errors.
        self.features = schema.parse(TextFeatures, manifest.options, source="options")
        inputs, outputs = interpreter.input_details(), interpreter.output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                "a text classifier needs 1 input and 1 output, the model has "
                f"{len(inputs)} and {len(outputs)}"
            )
        self.input, self.output = inputs[0], outputs[0]
        if self.input.shape != (1, self.features.buckets):
            raise ModelError(
                f"model input shape {list(self.input.shape)} does not fit "
                f"options.buckets = {self.features.buckets} (expected [1, {self.features.buckets}])"
            )
        if self.input.dtype != np.float32 and not self.input.quantized:
            raise ModelError(
                f"model input is {self.input.dtype.name} without quantization "
                "parameters; expected float32 or quantized int8/uint8"
            )
        if len(self.output.shape) != 2 or self.output.shape[0] != 1:
            raise ModelError(f"model output shape {list(self.output.shape)}; expected [1, classes]")
        if manifest.labels is None:
            raise ConfigError("labels: required for a text classifier")
        self.labels = read_labels(manifest.resolve(manifest.labels, "labels file"))
        if not all(self.labels):
            raise ConfigError(f"labels file {manifest.labels} has an empty line")
        if len(self.labels) != self.output.shape[1]:
            raise ConfigError(
                f"labels file {manifest.labels} has {len(self.labels)} labels, the model has "
                f"{self.output.shape[1]} classes"
            )
        post = manifest.postprocess
        if post.kind not in ("default", "scores", "logits"):
            raise ConfigError(f"postprocess.kind: expected 'scores' or 'logits', got {post.kind!r}")
        self.softmax = post.softmax if post.softmax is not None else post.kind == "logits"
        self.top_k = min(post.top_k, len(self.labels))
        self.min_score = post.min_score

    def preprocess(self, data: bytes) -> Prepared:
        """UTF-8 bytes -> the model's input tensor (quantized for an integer model)."""
        text = decode_text(data, self.features.max_bytes)
        tokens = tokenize(text)
        if not tokens:
            raise InputError("text has no words", "send at least one word")
        vec = featurize(text, self.features).reshape(self.input.shape)
        tensor = quantize(vec, self.input)
        return Prepared([tensor], {"tokens": len(tokens)})

    def postprocess(self, outputs: list[Array], prepared: Prepared) -> dict[str, Any]:
        """Scores -> ``{"label", "score", "top_k": [{"index", "label", "score"}], "tokens"}``.

        The image classifier's result shape plus the token count; ``label`` is
        null when the best score is below ``postprocess.min_score``.
        """
        scores = dequantize(outputs[0], self.output).reshape(-1)
        if self.softmax:
            scores = softmax(scores)
        top = top_classes(scores, self.labels, self.top_k)
        best = top[0]
        return {
            "label": best["label"] if best["score"] >= self.min_score else None,
            "score": best["score"],
            "top_k": top,
            "tokens": int(prepared.context.get("tokens", 0)),
        }
