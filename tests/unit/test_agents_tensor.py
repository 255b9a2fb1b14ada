"""The generic tensor agent: .npy/.npz in, JSON tensors out, strict shape/dtype checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from fieldbox.agents import Agent, load_agent
from fieldbox.errors import InputError

FACE_SHA = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"


@pytest.fixture
def tensor_agent(assets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Agent:
    monkeypatch.setenv("FIELDBOX_MODELS", str(assets_dir))
    path = tmp_path / "raw.json"
    path.write_text(
        json.dumps(
            {
                "name": "blazeface-raw",
                "kind": "tensor",
                "model": {"path": "face_detection_short_range.tflite", "sha256": FACE_SHA},
            }
        )
    )
    return load_agent(path)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def test_raw_tensors_in_and_out_match_a_bare_interpreter(tensor_agent: Agent) -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    result = tensor_agent.run(npy(x))
    outs = {o["name"]: o for o in result["outputs"]}
    assert outs["regressors"]["shape"] == [1, 896, 16] and outs["regressors"]["dtype"] == "float32"
    assert outs["classificators"]["shape"] == [1, 896, 1]
    it = tensor_agent.interpreter
    it.set_tensor(it.input_details()[0].index, x)
    it.invoke()
    want = it.get_tensor(it.output_details()[1].index)
    got = np.asarray(outs["classificators"]["data"], dtype=np.float32)
    assert np.array_equal(got, want)
    json.dumps(result)


def test_npz_by_input_name(tensor_agent: Agent) -> None:
    buf = io.BytesIO()
    np.savez(buf, input=np.zeros((1, 128, 128, 3), np.float32))
    assert len(tensor_agent.run(buf.getvalue())["outputs"]) == 2
    buf = io.BytesIO()
    np.savez(buf, other=np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(InputError, match="no array for input 'input'"):
        tensor_agent.run(buf.getvalue())


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (
            np.zeros((1, 64, 64, 3), np.float32),
            r"shape \[1, 64, 64, 3\], the model expects \[1, 128, 128, 3\]",
        ),
        (np.zeros((128, 128, 3), np.float32), "shape"),
        (np.zeros((1, 128, 128, 3), np.float64), "dtype float64, the model expects float32"),
        (np.zeros((1, 128, 128, 3), np.uint8), "dtype uint8"),
    ],
)
def test_wrong_shape_or_dtype_is_an_input_error(tensor_agent: Agent, array: np.ndarray, words: str) -> None:
    with pytest.raises(InputError, match=words):
        tensor_agent.run(npy(array))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not numpy",
        npy(np.zeros((1, 128, 128, 3), np.float32))[:200],  # truncated
        b"\x93NUMPY\x01\x00\xff\xff{garbage",
        b"PK\x03\x04 broken zip",
    ],
)
def test_corrupt_npy_is_an_input_error(tensor_agent: Agent, data: bytes) -> None:
    with pytest.raises(InputError):
        tensor_agent.run(data)


def test_pickled_object_arrays_are_refused(tensor_agent: Agent) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError):
        tensor_agent.run(buf.getvalue())
