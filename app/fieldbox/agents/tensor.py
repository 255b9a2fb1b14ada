"""Generic tensor agent: raw tensors in (``.npy``/``.npz`` bytes), raw tensors out (JSON).

For models whose inputs are not images or text (sensor windows, features,
embeddings). The input must match the model exactly: same shape (``-1`` in
the model's signature matches any size) and same dtype; anything else is an
:class:`~fieldbox.errors.InputError` naming both, because a silent cast would
hide a wrong pipeline. A model with several inputs takes an ``.npz`` whose
arrays are named after the inputs (or ``arr_0``, ``arr_1``, ... in order).
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np

from fieldbox.agents.base import Prepared
from fieldbox.agents.interpreter import Array, Interpreter, TensorDetail
from fieldbox.agents.manifest import AgentManifest
from fieldbox.errors import ConfigError, InputError

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def load_arrays(data: bytes) -> list[Array] | dict[str, Array]:
    """Parse ``.npy`` bytes (one array) or ``.npz`` bytes (named arrays); no pickles."""
    if not data:
        raise InputError("empty input (0 bytes)")
    try:
        if data.startswith(_NPY_MAGIC):
            return [np.load(io.BytesIO(data), allow_pickle=False)]
        if data.startswith(_ZIP_MAGIC):
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"corrupt .npy/.npz input: {reason}") from None
    raise InputError(f"not a .npy or .npz file ({len(data)} bytes, starts {data[:8]!r})")


def check_array(array: Array, detail: TensorDetail) -> Array:
    """The array, if its shape and dtype match the input; InputError saying what differs otherwise."""
    if array.dtype != detail.dtype:
        raise InputError(
            f"input {detail.name!r}: dtype {array.dtype.name}, the model expects {detail.dtype.name}"
        )
    shape = tuple(array.shape)
    want = detail.shape
    if len(shape) != len(want) or any(w not in (-1, s) for s, w in zip(shape, want, strict=True)):
        raise InputError(f"input {detail.name!r}: shape {list(shape)}, the model expects {list(want)}")
    return np.ascontiguousarray(array)


def output_json(array: Array, detail: TensorDetail) -> dict[str, Any]:
    """One output tensor as JSON: name, shape, dtype, nested lists, and its quantization."""
    out: dict[str, Any] = {
        "name": detail.name,
        "shape": list(array.shape),
        "dtype": array.dtype.name,
        "data": array.tolist(),
    }
    if detail.quantized:
        out["quantization"] = {"scale": detail.scale, "zero_point": detail.zero_point}
    return out


class TensorAgent:
    """Agent kind ``tensor``."""

    kind_name = "tensor"

    def __init__(self, manifest: AgentManifest, interpreter: Interpreter) -> None:
        if manifest.postprocess.kind not in ("default", "raw"):
            raise ConfigError(
                f"postprocess.kind {manifest.postprocess.kind!r}: a tensor agent only knows 'raw'"
            )
        self._inputs = interpreter.input_details()
        self._outputs = interpreter.output_details()

    def preprocess(self, data: bytes) -> Prepared:
        """Parse and check the input tensors."""
        arrays = load_arrays(data)
        if isinstance(arrays, dict):
            ordered = []
            for pos, detail in enumerate(self._inputs):
                array = arrays.get(detail.name, arrays.get(f"arr_{pos}"))
                if array is None:
                    raise InputError(
                        f"the .npz has no array for input {detail.name!r} (has: {', '.join(sorted(arrays))})"
                    )
                ordered.append(array)
            extra = len(arrays) - len(ordered)
            if extra > 0:
                raise InputError(
                    f"the .npz has {len(arrays)} arrays, the model has {len(self._inputs)} inputs"
                )
        else:
            ordered = arrays
        if len(ordered) != len(self._inputs):
            raise InputError(f"{len(ordered)} input array(s), the model has {len(self._inputs)} inputs")
        return Prepared([check_array(a, d) for a, d in zip(ordered, self._inputs, strict=True)])

    def postprocess(self, outputs: list[Array], prepared: Prepared) -> dict[str, Any]:
        """Every output as shape + dtype + nested lists."""
        return {"outputs": [output_json(a, d) for a, d in zip(outputs, self._outputs, strict=True)]}
