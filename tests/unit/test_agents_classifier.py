"""The image classifier kind on real models run by the real TFLite runtime.

Two families of models:

* colour classifiers written here with fieldbox's own TFLite writer: 4x4 RGB in,
  logits = 0.5 x the sum of each channel, softmax over red/green/blue. Built as
  float32 NHWC, float32 NCHW, and int8 in/int8 out (quantized input and
  output), so colour order, layout and quantization each have a model that
  tells right from wrong;
* the digits classifier fieldbox trains itself (``make models``), float32 and
  int8, on held-out handwritten digits.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldbox.agents import Agent, load_agent
from fieldbox.agents.classifier import softmax
from fieldbox.errors import ConfigError
from fieldbox_host.models.tflite_writer import DType, GraphBuilder, Quantization

LABELS = ["red", "green", "blue"]
OVERLAY = Path(__file__).resolve().parents[2] / "rootfs-overlay/etc/fieldbox/agents"


def _colour_model(layout: str, quantized: bool) -> bytes:
    g = GraphBuilder()
    shape = (1, 4, 4, 3) if layout == "NHWC" else (1, 3, 4, 4)
    channel_of = [k % 3 for k in range(48)] if layout == "NHWC" else [k // 16 for k in range(48)]
    mask = np.array([[1.0 if channel_of[k] == c else 0.0 for k in range(48)] for c in range(3)])
    if not quantized:
        x = g.input("pixels", shape, DType.FLOAT32)
        flat = g.reshape(x, (1, 48), "flat")
        w = g.constant("w", (0.5 * mask).astype(np.float32))
        b = g.constant("b", np.zeros(3, np.float32))
        logits = g.fully_connected(flat, w, b, "logits")
        return g.serialize([g.softmax(logits, "scores")], "colour classifier (float)")
    in_q = Quantization.per_tensor(1 / 255, -128)  # real 0..1
    w_scale = 0.5 / 127
    x = g.input("pixels", shape, DType.INT8, in_q)
    flat = g.reshape(x, (1, 48), "flat")
    w = g.constant("w", (127 * mask).astype(np.int8), Quantization.per_tensor(w_scale, 0))
    b = g.constant("b", np.zeros(3, np.int32), Quantization.per_tensor(np.float32(1 / 255 * w_scale), 0))
    logits = g.fully_connected(flat, w, b, "logits", out_quant=Quantization.per_tensor(8 / 255, -128))
    return g.serialize([g.softmax(logits, "scores")], "colour classifier (int8)")


@pytest.fixture(scope="module")
def colour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("colour")
    (d / "colours.txt").write_text("\n".join(LABELS) + "\n")
    for name, layout, quantized in (
        ("nhwc", "NHWC", False),
        ("nchw", "NCHW", False),
        ("int8", "NHWC", True),
    ):
        (d / f"{name}.tflite").write_bytes(_colour_model(layout, quantized))
    return d


def colour_agent(d: Path, model: str, **pre: str) -> Agent:
    data = (d / f"{model}.tflite").read_bytes()
    manifest = {
        "name": f"colour-{model}-{len(pre)}",
        "kind": "image-classifier",
        "labels": "colours.txt",
        "model": {"path": f"{model}.tflite", "sha256": hashlib.sha256(data).hexdigest()},
        "preprocess": {"mean": [0.0], "std": [255.0], **pre},
        "postprocess": {"kind": "scores", "top_k": 3, "min_score": 0.5},
    }
    path = d / f"{manifest['name']}.json"
    path.write_text(json.dumps(manifest))
    return load_agent(path)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def expected_scores(image: bytes) -> np.ndarray:
    """The colour model's maths in numpy, on the same 4x4 bilinear resize."""
    small = Image.open(io.BytesIO(image)).convert("RGB").resize((4, 4), Image.Resampling.BILINEAR)
    pixels = np.asarray(small, dtype=np.float64) / 255.0
    return softmax(0.5 * pixels.reshape(-1, 3).sum(axis=0))


@pytest.mark.parametrize("model", ["nhwc", "int8"])
@pytest.mark.parametrize(
    ("colour", "label"), [((250, 10, 10), "red"), ((0, 200, 30), "green"), ((20, 20, 255), "blue")]
)
def test_solid_colours(colour_dir: Path, model: str, colour: tuple[int, int, int], label: str) -> None:
    result = colour_agent(colour_dir, model).run(png(colour))
    assert result["label"] == label
    assert result["top_k"][0]["label"] == label and len(result["top_k"]) == 3


@pytest.mark.parametrize("photo", ["coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "grass.png"])
def test_float_and_int8_models_agree_with_numpy_on_photos(
    colour_dir: Path, assets_dir: Path, photo: str
) -> None:
    data = (assets_dir / photo).read_bytes()
    want = expected_scores(data)
    for model, tolerance in (("nhwc", 1e-5), ("int8", 0.02)):
        result = colour_agent(colour_dir, model).run(data)
        got = np.zeros(3)
        for item in result["top_k"]:
            got[item["index"]] = item["score"]
        assert np.allclose(got, want, atol=tolerance), (model, got, want)


def test_colour_order_bgr_swaps_red_and_blue(colour_dir: Path) -> None:
    assert colour_agent(colour_dir, "nhwc", color="bgr").run(png((250, 10, 10)))["label"] == "blue"
    assert colour_agent(colour_dir, "nhwc", color="bgr").run(png((10, 10, 250)))["label"] == "red"


def test_nchw_layout(colour_dir: Path) -> None:
    agent = colour_agent(colour_dir, "nchw", layout="NCHW")
    assert agent.run(png((0, 220, 0)))["label"] == "green"
    assert agent.run(png((250, 10, 10)))["label"] == "red"
    with pytest.raises(ConfigError, match="4 channels in layout NHWC"):
        colour_agent(colour_dir, "nchw")  # [1, 3, 4, 4] read as NHWC


def test_low_confidence_has_no_label_but_keeps_top_k(colour_dir: Path) -> None:
    result = colour_agent(colour_dir, "nhwc").run(png((128, 128, 128)))  # grey: 1/3 each
    assert result["label"] is None
    assert len(result["top_k"]) == 3 and all(abs(c["score"] - 1 / 3) < 0.01 for c in result["top_k"])


def test_labels_must_match_the_model(colour_dir: Path) -> None:
    (colour_dir / "colours.txt").write_text("red\ngreen\n")
    try:
        with pytest.raises(ConfigError, match="2 labels, the model has 3 classes"):
            colour_agent(colour_dir, "nhwc")
    finally:
        (colour_dir / "colours.txt").write_text("\n".join(LABELS) + "\n")


# --- the digits classifier fieldbox trains (make models) ---------------------------------------


@pytest.fixture
def digits_env(models_dir: Path, assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if not (models_dir / "digits_classifier.tflite").exists():
        pytest.fail("build/models/digits_classifier.tflite is missing: run `make models` first")
    monkeypatch.setenv("FIELDBOX_MODELS", f"{assets_dir}:{models_dir}")
    return models_dir


def _int8_variant(tmp_path: Path, models_dir: Path) -> Path:
    text = (OVERLAY / "digits-classifier.toml").read_text()
    data = (models_dir / "digits_classifier_int8.tflite").read_bytes()
    text = text.replace('path = "digits_classifier.tflite"', 'path = "digits_classifier_int8.tflite"')
    text = re.sub(r'sha256 = "[0-9a-f]{64}"', f'sha256 = "{hashlib.sha256(data).hexdigest()}"', text)
    text = text.replace('name = "digits-classifier"', 'name = "digits-classifier-int8"')
    path = tmp_path / "digits-int8.toml"
    path.write_text(text)
    return path


def test_digits_float_and_int8_read_held_out_digits(digits_env: Path, tmp_path: Path) -> None:
    samples = sorted((digits_env / "samples").glob("digit-*.png"))
    assert len(samples) >= 10
    for manifest in (OVERLAY / "digits-classifier.toml", _int8_variant(tmp_path, digits_env)):
        agent = load_agent(manifest)
        agent.self_test()
        right = 0
        for sample in samples:
            truth = sample.name.split("-")[1]
            right += agent.run(sample.read_bytes())["label"] == truth
        assert right / len(samples) >= 0.9, (manifest.name, right, len(samples))
