"""Fuzz the manifest parser: whatever the bytes or the mapping, only ConfigError comes out."""

from __future__ import annotations

import contextlib
import string
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbox.agents.manifest import load_manifest, parse_manifest
from fieldbox.errors import ConfigError

KEYS = [
    "name",
    "kind",
    "model",
    "path",
    "sha256",
    "threads",
    "warmup",
    "input",
    "shape",
    "dtype",
    "preprocess",
    "resize",
    "color",
    "layout",
    "mean",
    "std",
    "pad_value",
    "filter",
    "max_pixels",
    "postprocess",
    "min_score",
    "iou_threshold",
    "nms",
    "top_k",
    "max_results",
    "softmax",
    "anchors",
    "strides",
    "num_layers",
    "decode",
    "num_coords",
    "labels",
    "self_test",
    "sample",
    "options",
    "description",
    "source",
    "x",
]
VALID = {
    "name": "face",
    "kind": "image-detector",
    "model": {"path": "m.tflite", "sha256": "ab" * 32},
    "preprocess": {"resize": "letterbox", "mean": [127.5], "std": [127.5]},
    "postprocess": {"anchors": {"strides": [8, 16]}, "decode": {"num_coords": 16}},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["letterbox", "NHWC", "rgb", "weighted", "tensor", "image-detector", "ab" * 32, "\x00"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=10)


def _mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    doc = dict(base)
    node = doc
    for key in path[:-1]:
        child = node.get(key)
        node[key] = dict(child) if isinstance(child, dict) else {}
        node = node[key]
    node[path[-1]] = value
    return doc


@settings(max_examples=120, deadline=None)
@given(documents)
def test_arbitrary_documents_only_raise_config_error(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_manifest(doc, source="fuzz.toml")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), values)
def test_one_wrong_value_in_a_valid_manifest(path: list[str], value: Any) -> None:
    with contextlib.suppress(ConfigError):
        parse_manifest(_mutate(VALID, path, value), source="fuzz.toml")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), st.text(alphabet=string.printable + "[]=\"'{}é\x00", max_size=300)))
def test_arbitrary_file_bytes_only_raise_config_error(tmp_path: Path, data: bytes | str) -> None:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    for suffix in (".toml", ".json"):
        path = tmp_path / f"m{suffix}"
        path.write_bytes(raw)
        with contextlib.suppress(ConfigError):
            load_manifest(path)


def test_the_valid_base_document_parses() -> None:
    assert parse_manifest(VALID).name == "face"
