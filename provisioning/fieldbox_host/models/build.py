"""Train, export and score the models fieldbox builds itself; write them to one directory.

``python -m fieldbox_host.models OUTDIR`` (``make models``) writes:

=================================  ==============================================================
intent_classifier.tflite           text intents, float32: [1, 2048] hashed features -> 5 scores
intent_classifier_int8.tflite      the same, int8 weights and int8 input/output tensors
intent_labels.txt                  one label per line (alarm, config, greeting, maintenance, status)
intent_features.json               the featurizer settings (the manifest's ``[options]``)
digits_classifier.tflite           handwritten digits, float32: [1, 8, 8, 1] grey 0..1 -> 10 scores
digits_classifier_int8.tflite      the same, int8 inside, float32 input/output (QUANTIZE/DEQUANTIZE)
digits_labels.txt                  0..9
samples/digit-<label>-<i>.png      held-out digits as real 8x8 PNG files
samples/intent-<label>.txt         one held-out sentence per intent
report.json                        held-out accuracy of numpy, float32 and int8 models; sizes; sha256
=================================  ==============================================================

Every file is a pure function of the sources (seeded training, deterministic
export), so the sha256 values in ``rootfs-overlay/etc/fieldbox/agents/*.toml``
can be pinned; ``tests/unit/test_models_build.py`` rebuilds and compares.
Accuracies are measured by running the exported files in the real TFLite
runtime (through :mod:`fieldbox.agents.interpreter`), not by the numpy model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from fieldbox.agents.image import dequantize, quantize
from fieldbox.agents.interpreter import open_model_bytes
from fieldbox.agents.text import TextFeatures, featurize_many
from fieldbox.durable import atomic_write
from fieldbox_host import assets
from fieldbox_host.models import datasets
from fieldbox_host.models.export import export_float32, export_int8, int8_reference, plan_int8
from fieldbox_host.models.mlp import MLP, TrainConfig, accuracy, train

TEXT_FEATURES = TextFeatures(buckets=2048, ngrams=2)
"""The featurizer the intent model is trained with (= the manifest's ``[options]``)."""
TEXT_TRAIN = TrainConfig(hidden=(32,), epochs=60, batch=32, lr=0.01, weight_decay=1e-4, seed=0)
DIGITS_TRAIN = TrainConfig(hidden=(32,), epochs=60, batch=32, lr=0.005, weight_decay=1e-4, seed=0)
DIGITS_HELD_OUT = 0.2
DIGITS_SPLIT_SEED = 42
DIGIT_SAMPLES_PER_LABEL = 2

INTENT_FILES = ("intent_classifier.tflite", "intent_classifier_int8.tflite")
DIGITS_FILES = ("digits_classifier.tflite", "digits_classifier_int8.tflite")


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Output:
    """Files written so far (name -> bytes), for the report and the printed digest list."""

    directory: Path
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def write(self, name: str, data: bytes) -> None:
        """Write ``directory/name`` durably and remember it."""
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        self.files[name] = data

    def describe(self, name: str) -> dict[str, Any]:
        """Size and sha256 of one written file."""
        return {"bytes": len(self.files[name]), "sha256": sha256(self.files[name])}


def run_model(model: bytes, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Real-valued outputs of a ``.tflite`` model for each row, one invoke per row (batch 1).

    Integer inputs are quantized and integer outputs dequantized with the
    model's own parameters, by the same functions the agent kinds use.
    """
    interp = open_model_bytes(model, threads=1, source="<built model>")
    (inp,), (out,) = interp.input_details(), interp.output_details()
    results = []
    for row in rows:
        interp.set_tensor(inp.index, quantize(row.reshape(inp.shape), inp))
        interp.invoke()
        results.append(dequantize(interp.get_tensor(out.index), out).reshape(-1))
    return np.asarray(results, dtype=np.float64)


def _scores(
    mlp: MLP, float_model: bytes, int8_model: bytes, int8_ref: Callable[[Any], Any],
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64],
) -> dict[str, Any]:
    p_float = run_model(float_model, x)
    p_int8 = run_model(int8_model, x)
    return {
        "numpy_float64": round(accuracy(mlp.predict(x), y), 4),
        "tflite_float32": round(accuracy(p_float.argmax(1), y), 4),
        "tflite_int8": round(accuracy(p_int8.argmax(1), y), 4),
        "numpy_int8_reference": round(accuracy(np.asarray(int8_ref(x)).argmax(1), y), 4),
        "int8_agrees_with_float32": round(accuracy(p_int8.argmax(1), p_float.argmax(1)), 4),
        "float32_max_abs_diff_vs_numpy": float(np.abs(p_float - mlp.probs(x)).max()),
    }


def build_intents(out: Output) -> dict[str, Any]:
    """Train and export the intent classifier; its report section."""
    train_set = datasets.load_intents(datasets.DATA_DIR / "intents.tsv")
    held_out = datasets.load_intents(datasets.DATA_DIR / "intents_heldout.tsv")
    x_train = featurize_many(train_set.texts, TEXT_FEATURES)
    x_test = featurize_many(held_out.texts, TEXT_FEATURES)
    mlp = train(x_train, train_set.labels, len(datasets.INTENT_LABELS), TEXT_TRAIN)
    shape = (1, TEXT_FEATURES.buckets)
    float_model = export_float32(mlp, shape, "fieldbox intent classifier (float32)")
    plan = plan_int8(mlp, x_train)
    int8_model = export_int8(plan, shape, "fieldbox intent classifier (int8)", io="int8")
    out.write(INTENT_FILES[0], float_model)
    out.write(INTENT_FILES[1], int8_model)
    out.write("intent_labels.txt", "".join(f"{label}\n" for label in datasets.INTENT_LABELS).encode())
    out.write("intent_features.json",
              (json.dumps(dataclasses.asdict(TEXT_FEATURES), indent=2, sort_keys=True) + "\n").encode())
    for index, label in enumerate(datasets.INTENT_LABELS):
        first = next(t for t, y in zip(held_out.texts, held_out.labels, strict=True) if y == index)
        out.write(f"samples/intent-{label}.txt", (first + "\n").encode())
    return {
        "task": "intent of a short English sentence",
        "labels": list(datasets.INTENT_LABELS),
        "features": dataclasses.asdict(TEXT_FEATURES),
        "architecture": f"[1,{TEXT_FEATURES.buckets}] -> FC {TEXT_TRAIN.hidden[0]} -> RELU -> FC "
                        f"{len(datasets.INTENT_LABELS)} -> SOFTMAX",
        "train": dataclasses.asdict(TEXT_TRAIN) | {"examples": len(train_set.texts)},
        "held_out_examples": len(held_out.texts),
        "held_out_accuracy": _scores(mlp, float_model, int8_model,
                                     lambda x: int8_reference(plan, x), x_test, held_out.labels),
        "train_accuracy_numpy": round(accuracy(mlp.predict(x_train), train_set.labels), 4),
        "files": {name: out.describe(name) for name in INTENT_FILES},
    }


def _png(image: npt.NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def build_digits(out: Output, assets_dir: Path) -> dict[str, Any]:
    """Train and export the digits classifier; its report section."""
    digits = datasets.load_digits(assets.fetch("digits.csv.gz", assets_dir))
    train_idx, test_idx = datasets.split(len(digits.labels), DIGITS_HELD_OUT, DIGITS_SPLIT_SEED)
    train_set, held_out = digits.subset(train_idx), digits.subset(test_idx)
    # What the image-classifier kind feeds the model: grey pixels (0..255) / 255, [1, 8, 8, 1].
    x_train = (train_set.images.astype(np.float32) / np.float32(255.0)).reshape(-1, 64)
    x_test = (held_out.images.astype(np.float32) / np.float32(255.0)).reshape(-1, 64)
    mlp = train(x_train, train_set.labels, 10, DIGITS_TRAIN)
    shape = (1, 8, 8, 1)
    float_model = export_float32(mlp, shape, "fieldbox digits classifier (float32)")
    plan = plan_int8(mlp, x_train)
    int8_model = export_int8(plan, shape, "fieldbox digits classifier (int8)", io="float32")
    out.write(DIGITS_FILES[0], float_model)
    out.write(DIGITS_FILES[1], int8_model)
    out.write("digits_labels.txt", "".join(f"{label}\n" for label in datasets.DIGIT_LABELS).encode())
    for label in range(10):
        picks = np.flatnonzero(held_out.labels == label)[:DIGIT_SAMPLES_PER_LABEL]
        for i, row in enumerate(picks):
            out.write(f"samples/digit-{label}-{i}.png", _png(held_out.images[row]))
    return {
        "task": "handwritten digit in an 8x8 grey image (UCI optical digits via scikit-learn 1.6.1)",
        "labels": list(datasets.DIGIT_LABELS),
        "architecture": "[1,8,8,1] -> RESHAPE [1,64] -> FC 32 -> RELU -> FC 10 -> SOFTMAX",
        "train": dataclasses.asdict(DIGITS_TRAIN) | {"examples": len(train_set.labels)},
        "held_out_examples": len(held_out.labels),
        "held_out_accuracy": _scores(mlp, float_model, int8_model,
                                     lambda x: int8_reference(plan, x), x_test, held_out.labels),
        "train_accuracy_numpy": round(accuracy(mlp.predict(x_train), train_set.labels), 4),
        "files": {name: out.describe(name) for name in DIGITS_FILES},
    }


def build_all(out_dir: Path, assets_dir: Path) -> dict[str, Any]:
    """Build every model into ``out_dir``; returns (and writes) the report."""
    out = Output(Path(out_dir))
    report = {
        "intent_classifier": build_intents(out),
        "digits_classifier": build_digits(out, Path(assets_dir)),
    }
    out.write("report.json", (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    report["all_files"] = {name: out.describe(name) for name in sorted(out.files)}
    return report


def ensure_built(out_dir: Path, assets_dir: Path) -> Path:
    """Build into ``out_dir`` unless its report and models are already there; returns ``out_dir``."""
    out_dir = Path(out_dir)
    wanted = [*INTENT_FILES, *DIGITS_FILES, "report.json"]
    if not all((out_dir / name).is_file() for name in wanted):
        build_all(out_dir, assets_dir)
    return out_dir


def device_files(out_dir: Path) -> list[str]:
    """Names (relative to ``out_dir``) the device needs in its models directory.

    The manifests in ``rootfs-overlay/etc/fieldbox/agents`` name their labels
    files and self-test samples (``samples/...``) relative to
    ``FIELDBOX_MODELS``, so an image must carry these, keeping the
    ``samples/`` subdirectory, not just the ``.tflite`` files.
    """
    out_dir = Path(out_dir)
    names = [*INTENT_FILES, *DIGITS_FILES, "intent_labels.txt", "digits_labels.txt", "intent_features.json"]
    names += sorted(p.relative_to(out_dir).as_posix() for p in (out_dir / "samples").glob("*"))
    return names
