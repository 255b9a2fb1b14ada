"""The text-classifier kind through the real Agent API, on real held-out sentences and real models.

Also the digits manifest end to end on real PNG files through the image-classifier kind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fieldbox.agents import load_agent
from fieldbox.errors import ConfigError, InputError, ModelError
from fieldbox_host.models import datasets
from fieldbox_host.models.build import build_all, ensure_built

AGENTS = Path(__file__).resolve().parents[2] / "rootfs-overlay" / "etc" / "fieldbox" / "agents"
TEXT = AGENTS / "text-classifier.toml"
DIGITS = AGENTS / "digits-classifier.toml"


def _pinned(manifest: Path) -> str:
    return str(tomllib.loads(manifest.read_text())["model"]["sha256"])


@pytest.fixture(scope="module")
def built(models_dir, assets_dir) -> Path:
    """build/models, (re)built when missing or not the bytes the manifests pin."""
    ensure_built(models_dir, assets_dir)
    model = models_dir / "intent_classifier.tflite"
    if hashlib.sha256(model.read_bytes()).hexdigest() != _pinned(TEXT):
        build_all(models_dir, assets_dir)
    return models_dir


@pytest.fixture
def env(built, monkeypatch) -> Path:
    monkeypatch.setenv("FIELDBOX_MODELS", str(built))
    return built


def _variant(tmp_path: Path, base: Path, name: str, change) -> Path:
    """A copy of ``base`` (as JSON, which manifests may also be) with ``change(doc)`` applied."""
    doc = copy.deepcopy(tomllib.loads(base.read_text()))
    change(doc)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _int8(tmp_path: Path, models: Path) -> Path:
    digest = hashlib.sha256((models / "intent_classifier_int8.tflite").read_bytes()).hexdigest()

    def change(doc):
        doc["name"] = "text-classifier-int8"
        doc["model"] = {"path": "intent_classifier_int8.tflite", "sha256": digest}
        doc["input"]["dtype"] = "int8"

    return _variant(tmp_path, TEXT, "int8", change)


def _held_out() -> datasets.TextSet:
    return datasets.load_intents(datasets.DATA_DIR / "intents_heldout.tsv")


def _predict(agent, texts) -> list[str | None]:
    return [agent.run(t.encode("utf-8"))["top_k"][0]["label"] for t in texts]


def test_held_out_accuracy_through_the_agent(env):
    agent = load_agent(TEXT)
    held = _held_out()
    predicted = _predict(agent, held.texts)
    truth = [datasets.INTENT_LABELS[i] for i in held.labels]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert accuracy >= 0.88  # measured 0.93 on these 100 sentences
    assert agent.stats()["count"] == len(held.texts)


def test_int8_model_through_the_same_kind(env, tmp_path):
    agent = load_agent(_int8(tmp_path, env))
    detail = agent.interpreter.input_details()[0]
    assert detail.dtype == np.int8 and detail.quantized  # the kind quantizes with the model's params
    held = _held_out()
    q = _predict(agent, held.texts)
    f = _predict(load_agent(TEXT), held.texts)
    truth = [datasets.INTENT_LABELS[i] for i in held.labels]
    assert np.mean([a == b for a, b in zip(q, truth, strict=True)]) >= 0.88
    assert np.mean([a == b for a, b in zip(q, f, strict=True)]) >= 0.95
    result = agent.run(b"smoke is pouring out of the inverter cabinet")
    assert result["label"] == "alarm" and 0.0 <= result["score"] <= 1.0


def test_result_shape(env):
    result = load_agent(TEXT).run(b"Please replace the worn belt on conveyor 2.")
    assert result["label"] == "maintenance"
    assert result["top_k"][0]["label"] == "maintenance"
    assert len(result["top_k"]) == 3
    scores = [c["score"] for c in result["top_k"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6
    assert result["tokens"] == 8
    assert result["latency_ms"] > 0


def test_min_score_leaves_uncertain_results_unlabelled(env, tmp_path):
    path = _variant(tmp_path, TEXT, "strict", lambda d: d["postprocess"].update(min_score=0.99))
    agent = load_agent(path)
    results = [agent.run(t.encode()) for t in _held_out().texts]
    assert any(r["label"] is None for r in results) and any(r["label"] is not None for r in results)
    for r in results:
        assert (r["label"] is None) == (r["score"] < 0.99)


def test_shipped_manifests_pass_their_self_tests(env):
    for manifest in (TEXT, DIGITS):
        load_agent(manifest).self_test()


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "text is empty"), (b"   \n", "text is empty"), (b"\xc3\x28 pump", "not valid UTF-8"),
     ("?! ... —".encode(), "no words")],
)
def test_unusable_input_is_an_input_error_and_the_agent_carries_on(env, data, message):
    agent = load_agent(TEXT)
    with pytest.raises(InputError, match=message):
        agent.run(data)
    assert agent.run(b"hello there")["label"] == "greeting"
    assert agent.stats()["errors"] == 1


def test_text_longer_than_max_bytes_is_refused(env, tmp_path):
    path = _variant(tmp_path, TEXT, "short", lambda d: d["options"].update(max_bytes=32))
    agent = load_agent(path)
    with pytest.raises(InputError, match="more than the limit of 32"):
        agent.run(b"the pump " * 10)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda d: d["options"].update(buckets=1024), ModelError, "does not fit options.buckets = 1024"),
        (lambda d: d["options"].update(bucket=2048), ConfigError, "options: bucket: unknown key"),
        (lambda d: d["options"].update(ngrams=7), ConfigError, "options: ngrams: must be 1, 2 or 3"),
        (lambda d: d.pop("labels"), ConfigError, "labels: required"),
        (lambda d: d.update(labels="digits_labels.txt"), ConfigError, "has 10 labels, the model has 5"),
        (lambda d: d["postprocess"].update(kind="ssd-anchors"), ConfigError, "expected 'scores' or 'logits'"),
    ],
)
def test_manifest_that_does_not_fit_the_model_is_refused(env, tmp_path, change, error, message):
    path = _variant(tmp_path, TEXT, "bad", change)
    with pytest.raises(error, match=message) as info:
        load_agent(path)
    assert str(path) in str(info.value)  # the runner names the manifest


def test_a_text_model_with_an_image_manifest_shape_is_refused(env, tmp_path):
    def change(doc):
        doc["model"] = tomllib.loads(DIGITS.read_text())["model"]
        doc.pop("input")

    with pytest.raises(ModelError, match=r"model input shape \[1, 8, 8, 1\]"):
        load_agent(_variant(tmp_path, TEXT, "digits-as-text", change))


def test_digits_manifest_reads_the_sample_pngs(env):
    agent = load_agent(DIGITS)
    samples = sorted((env / "samples").glob("digit-*.png"))
    assert len(samples) == 20
    right = sum(agent.run(p.read_bytes())["top_k"][0]["label"] == p.name.split("-")[1] for p in samples)
    assert right >= 19  # measured 20 of 20


def test_digits_int8_build_is_a_drop_in(env, tmp_path):
    digest = hashlib.sha256((env / "digits_classifier_int8.tflite").read_bytes()).hexdigest()

    def change(doc):
        doc["model"] = {"path": "digits_classifier_int8.tflite", "sha256": digest}

    agent = load_agent(_variant(tmp_path, DIGITS, "digits-int8", change))
    assert agent.interpreter.input_details()[0].dtype == np.float32  # QUANTIZE/DEQUANTIZE inside
    reference = load_agent(DIGITS)
    for png in sorted((env / "samples").glob("digit-*.png")):
        data = png.read_bytes()
        assert agent.run(data)["label"] == reference.run(data)["label"]
