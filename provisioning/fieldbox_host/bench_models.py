"""Benchmark section "models": what int8 buys over float32 for the models fieldbox trains.

For the intent classifier and the digits classifier, the int8 build is timed
against the float32 build in the same run, interleaved in blocks so machine
drift hits both alike: a bare ``set_tensor`` / ``invoke`` / ``get_tensor`` loop
(one thread, real held-out inputs), p50 per inference. Also the file sizes and
the held-out accuracies ``make models`` measured (``report.json``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fieldbox.agents.image import quantize
from fieldbox.agents.interpreter import TFLiteInterpreter, open_model_bytes
from fieldbox.agents.text import featurize_many
from fieldbox_host.bench import Row
from fieldbox_host.models import datasets
from fieldbox_host.models.build import TEXT_FEATURES, ensure_built

MODELS_DIR = Path("build/models")
ASSETS_DIR = Path("build/assets")
BLOCKS = 10
PER_BLOCK = 300
WARMUP = 100


def _loop(interp: TFLiteInterpreter, inputs: list[npt.NDArray[np.generic]], n: int) -> list[float]:
    """Per-inference seconds of ``n`` set/invoke/get rounds cycling through ``inputs``."""
    inp = interp.input_details()[0].index
    out = interp.output_details()[0].index
    set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
    clock = time.perf_counter
    times = []
    for i in range(n):
        start = clock()
        set_tensor(inp, inputs[i % len(inputs)])
        invoke()
        get_tensor(out)
        times.append(clock() - start)
    return times


def _compare(name: str, float_file: Path, int8_file: Path, rows: npt.NDArray[np.float32]) -> list[Row]:
    models: dict[str, tuple[TFLiteInterpreter, list[npt.NDArray[np.generic]], list[float]]] = {}
    for label, path in (("float32", float_file), ("int8", int8_file)):
        interp = open_model_bytes(path.read_bytes(), threads=1, source=str(path))
        detail = interp.input_details()[0]
        inputs: list[npt.NDArray[np.generic]] = [quantize(r.reshape(detail.shape), detail) for r in rows]
        _loop(interp, inputs, WARMUP)
        models[label] = (interp, inputs, [])
    for _ in range(BLOCKS):
        for interp, inputs, times in models.values():
            times.extend(_loop(interp, inputs, PER_BLOCK))
    p50 = {label: statistics.median(t) * 1e6 for label, (_, _, t) in models.items()}
    size = {"float32": float_file.stat().st_size / 1024, "int8": int8_file.stat().st_size / 1024}
    n = BLOCKS * PER_BLOCK
    return [
        Row("models", f"{name} int8 invoke p50 (n={n}, 1 thread)", p50["int8"], "µs",
            baseline=p50["float32"], baseline_name="float32"),
        Row("models", f"{name} int8 file size", size["int8"], "KiB",
            baseline=size["float32"], baseline_name="float32"),
    ]


def bench() -> list[Row]:
    """int8 vs float32 latency and size for the intent and digits classifiers, plus held-out accuracy."""
    ensure_built(MODELS_DIR, ASSETS_DIR)
    held = datasets.load_intents(datasets.DATA_DIR / "intents_heldout.tsv")
    text_rows = featurize_many(held.texts, TEXT_FEATURES)
    digits = datasets.load_digits(ASSETS_DIR / "digits.csv.gz")
    digit_rows = (digits.images[:200].astype(np.float32) / np.float32(255.0)).reshape(-1, 8, 8, 1)
    rows = _compare("intent classifier", MODELS_DIR / "intent_classifier.tflite",
                    MODELS_DIR / "intent_classifier_int8.tflite", text_rows)
    rows += _compare("digits classifier", MODELS_DIR / "digits_classifier.tflite",
                     MODELS_DIR / "digits_classifier_int8.tflite", digit_rows)
    report = json.loads((MODELS_DIR / "report.json").read_text())
    for key, name in (("intent_classifier", "intent classifier"), ("digits_classifier", "digits classifier")):
        acc = report[key]["held_out_accuracy"]
        n = report[key]["held_out_examples"]
        rows.append(Row("models", f"{name} int8 held-out accuracy (n={n})", acc["tflite_int8"], "",
                        baseline=acc["tflite_float32"], baseline_name="float32"))
    return rows
