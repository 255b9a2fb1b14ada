"""The one interpreter interface: runtime choice, tensor details, bad model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fieldbox.agents import interpreter as interp_mod
from fieldbox.agents.interpreter import TensorDetail, open_model, open_model_bytes, runtime_class
from fieldbox.errors import DependencyError, ModelError


def test_tensor_details_of_blazeface(assets_dir: Path) -> None:
    it = open_model(assets_dir / "face_detection_short_range.tflite", threads=2)
    assert it.runtime == "tflite_runtime.interpreter" and it.threads == 2
    (inp,) = it.input_details()
    assert inp.shape == (1, 128, 128, 3) and inp.dtype == np.float32 and not inp.quantized
    assert {o.name: o.shape for o in it.output_details()} == {
        "regressors": (1, 896, 16),
        "classificators": (1, 896, 1),
    }
    it.set_tensor(inp.index, np.zeros(inp.shape, np.float32))
    it.invoke()
    scores = it.get_tensor(it.output_details()[1].index)
    assert scores.shape == (1, 896, 1) and np.isfinite(scores).all()


def test_quantization_params_are_read() -> None:
    detail = TensorDetail.from_runtime(
        {"name": "q", "index": 3, "shape": np.array([1, 4]), "dtype": np.int8, "quantization": (0.5, -3)}
    )
    assert detail.quantized and detail.scale == 0.5 and detail.zero_point == -3
    assert detail.to_json()["quantization"] == {"scale": 0.5, "zero_point": -3}
    floating = TensorDetail.from_runtime({"name": "f", "index": 0, "shape": [2], "dtype": np.float32})
    assert not floating.quantized


def test_falls_back_to_the_next_runtime(monkeypatch: pytest.MonkeyPatch, assets_dir: Path) -> None:
    monkeypatch.setattr(interp_mod, "RUNTIMES", ("no_such_runtime.interpreter", "tflite_runtime.interpreter"))
    name, _ = runtime_class()
    assert name == "tflite_runtime.interpreter"
    assert open_model(assets_dir / "face_detection_short_range.tflite").runtime == name


def test_no_runtime_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch, assets_dir: Path) -> None:
    monkeypatch.setattr(interp_mod, "RUNTIMES", ("no_such_runtime.interpreter", "nor_this.interpreter"))
    with pytest.raises(DependencyError, match="no TFLite runtime installed"):
        open_model(assets_dir / "face_detection_short_range.tflite")


# "1234TFL3" + 0xff...: the identifier is right, the offsets are garbage. The runtime does not
# verify the flatbuffer and dies with SIGSEGV on it; the forked pre-check turns that into a ModelError.
@pytest.mark.parametrize(
    "content",
    [b"", b"TFL3", b"\x00" * 100, b"1234TFL3" + b"\xff" * 200, b"<html>not a model</html>"],
)
def test_corrupt_models_are_model_errors(content: bytes) -> None:
    with pytest.raises(ModelError):
        open_model_bytes(content, source="bad.tflite")


def test_truncated_real_model_is_a_model_error(assets_dir: Path) -> None:
    data = (assets_dir / "face_detection_short_range.tflite").read_bytes()
    with pytest.raises(ModelError, match="malformed|cannot load model"):
        open_model_bytes(data[: len(data) // 3], source="half.tflite")


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        open_model(tmp_path / "none.tflite")


def test_probe_results_are_kept_across_processes_and_never_for_a_crash(
    assets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "probes"
    monkeypatch.setenv("FIELDBOX_PROBE_CACHE", str(cache))
    good = (assets_dir / "face_detection_short_range.tflite").read_bytes()
    monkeypatch.setattr(interp_mod, "_CHECKED", set())
    open_model_bytes(good, source="face.tflite")
    (marker,) = cache.iterdir()
    assert marker.name.startswith(__import__("hashlib").sha256(good).hexdigest() + "-tflite_runtime-")

    # a new process (nothing checked in memory) trusts the marker: no fork at all
    monkeypatch.setattr(interp_mod, "_CHECKED", set())

    def no_fork() -> int:
        raise AssertionError("probed again despite the marker")

    monkeypatch.setattr(interp_mod.os, "fork", no_fork)
    assert open_model_bytes(good, source="face.tflite").threads == 1
    monkeypatch.undo()

    # a model that crashes the runtime leaves no marker
    monkeypatch.setenv("FIELDBOX_PROBE_CACHE", str(cache))
    with pytest.raises(ModelError):
        open_model_bytes(good[: len(good) // 3], source="half.tflite")
    assert len(list(cache.iterdir())) == 1
