"""The agent manifest schema: what it accepts, what it refuses, how paths resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fieldbox.agents import kinds
from fieldbox.agents.manifest import AgentManifest, load_manifest, parse_manifest
from fieldbox.errors import ConfigError

OVERLAY = Path(__file__).resolve().parents[2] / "rootfs-overlay/etc/fieldbox/agents"
SHA = "ab" * 32


def minimal(**extra: Any) -> dict[str, Any]:
    return {"name": "a", "kind": "tensor", "model": {"path": "m.tflite", "sha256": SHA}, **extra}


def test_shipped_face_detector_manifest() -> None:
    m = load_manifest(OVERLAY / "face-detector.toml")
    assert m.name == "face-detector" and m.kind == "image-detector"
    assert m.model.sha256 == "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
    assert m.preprocess.resize == "letterbox" and m.preprocess.mean == [127.5]
    assert m.postprocess.anchors is not None and m.postprocess.anchors.strides == [8, 16, 16, 16]
    assert m.postprocess.iou_threshold == 0.3 and m.postprocess.min_score == 0.5
    assert m.source == OVERLAY / "face-detector.toml"


def test_defaults() -> None:
    m = parse_manifest(minimal())
    assert m.threads == 1 and m.warmup == 1 and m.labels is None and m.options == {}
    assert m.preprocess.layout == "NHWC" and m.postprocess.top_k == 5


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "tensor", "model": {"path": "m", "sha256": SHA}}, "name: missing"),
        (minimal(name="Bad Name!"), "name: must be"),
        (minimal(kind="magic"), "kind: expected one of"),
        (minimal(model={"path": "m", "sha256": "xyz"}), "model.sha256: must be 64"),
        (minimal(model={"path": "m"}), "model.sha256: missing"),
        (minimal(threads=-1), "threads: must not be negative"),
        (minimal(threads="2"), "threads: expected int"),
        (minimal(preprocess={"layout": "HWC"}), "preprocess.layout: expected 'NHWC' or 'NCHW'"),
        (minimal(preprocess={"std": [1.0, 0.0, 1.0]}), "preprocess.std: must not contain 0"),
        (minimal(preprocess={"mean": [1.0, 2.0]}), "preprocess.mean: must have 1 value"),
        (minimal(preprocess={"color": "gray", "mean": [1, 2, 3]}), "gray image has 1 channel"),
        (minimal(postprocess={"min_score": 1.5}), "postprocess.min_score: must lie between 0 and 1"),
        (minimal(postprocess={"anchors": {"strides": []}}), "postprocess.anchors"),
        (minimal(postprocess={"top_k": 0}), "postprocess.top_k: must be greater than 0"),
        (minimal(input={"shape": [1, 0, 3]}), "input.shape: dimensions must be positive"),
        (minimal(input={"dtype": "complex64"}), "input.dtype: must be one of"),
        (minimal(colour="rgb"), "colour: unknown key"),
        (minimal(source="/etc/passwd"), "source: unknown key"),
    ],
)
def test_bad_manifests_name_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_manifest(doc, source="agents/x.toml")


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_manifest(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_manifest(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level"):
        load_manifest(bad_json)


def test_json_and_toml_are_the_same_schema(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(minimal(threads=3)))
    (tmp_path / "a.toml").write_text(
        f'name = "a"\nkind = "tensor"\nthreads = 3\n[model]\npath = "m.tflite"\nsha256 = "{SHA}"\n'
    )
    assert load_manifest(tmp_path / "a.json") == load_manifest(tmp_path / "a.toml")


def test_resolve_next_to_manifest_then_fieldbox_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, here = tmp_path / "first", tmp_path / "second", tmp_path / "here"
    for d in (first, second, here):
        d.mkdir()
    (second / "m.tflite").write_bytes(b"x")
    (here / "a.json").write_text(json.dumps(minimal()))
    monkeypatch.setenv("FIELDBOX_MODELS", f"{first}:{second}")
    m = load_manifest(here / "a.json")
    assert m.model_path() == second / "m.tflite"
    (first / "m.tflite").write_bytes(b"y")
    assert m.model_path() == first / "m.tflite"
    (here / "m.tflite").write_bytes(b"z")
    assert m.model_path() == here / "m.tflite"
    with pytest.raises(ConfigError, match="labels file 'l.txt' not found"):
        m.resolve("l.txt", "labels file")


def test_text_kind_without_its_module_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kinds.KINDS, "text-classifier", "fieldbox.agents.no_such_text_module:TextClassifier")
    with pytest.raises(ConfigError, match="text classifier support not installed"):
        kinds.kind_class("text-classifier")


def test_every_registered_kind_imports() -> None:
    for name in kinds.KINDS:
        cls = kinds.kind_class(name)
        assert cls.kind_name == name


def test_schema_describes_every_key() -> None:
    from fieldbox.schema import describe_schema

    keys = {row[0] for row in describe_schema(AgentManifest)}
    assert {
        "name",
        "model.sha256",
        "preprocess.resize",
        "postprocess.anchors",
        "self_test.sample",
    } <= keys
    assert "source" not in keys
