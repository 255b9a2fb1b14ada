"""load_agent / load_agents / Agent on the real BlazeFace model: errors, stats, self-test."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fieldbox.agents import Agent, load_agent, load_agents
from fieldbox.errors import ConfigError, FieldboxError, InputError, ModelError

OVERLAY = Path(__file__).resolve().parents[2] / "rootfs-overlay/etc/fieldbox/agents"
FACE_SHA = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"


@pytest.fixture
def models_env(assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIELDBOX_MODELS", str(assets_dir))
    return assets_dir


@pytest.fixture
def face(models_env: Path) -> Agent:
    return load_agent(OVERLAY / "face-detector.toml")


def write_manifest(directory: Path, name: str = "face", **extra: str) -> Path:
    body = {
        "name": f'"{name}"',
        "kind": '"image-detector"',
        "threads": "2",
        **extra,
    }
    text = "\n".join(f"{k} = {v}" for k, v in body.items())
    text += f'\n[model]\npath = "face_detection_short_range.tflite"\nsha256 = "{FACE_SHA}"\n'
    text += '[preprocess]\nresize = "letterbox"\nmean = [127.5]\nstd = [127.5]\n'
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_public_api_and_json_result(face: Agent, assets_dir: Path) -> None:
    assert face.name == "face-detector" and face.kind == "image-detector"
    assert face.manifest.model.sha256 == FACE_SHA
    result = face.run((assets_dir / "astronaut.png").read_bytes())
    assert result["latency_ms"] > 0
    json.dumps(result, allow_nan=False)  # JSON-serialisable, no NaN


def test_truncated_images_are_input_errors(face: Agent, assets_dir: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    jpeg = (assets_dir / "rocket.jpg").read_bytes()
    png = (assets_dir / "astronaut.png").read_bytes()
    for data in (jpeg[: len(jpeg) // 2], png[: len(png) // 2], jpeg[:100]):
        with pytest.raises(InputError) as err:
            face.run(data)
        assert "\n" not in str(err.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"just some text, not a picture", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, "image"),
    ],
)
def test_garbage_is_an_input_error(face: Agent, data: bytes, words: str) -> None:
    with pytest.raises(InputError, match=words):
        face.run(data)


def test_errors_are_counted_and_the_agent_carries_on(face: Agent, assets_dir: Path) -> None:
    with pytest.raises(InputError):
        face.run(b"")
    assert len(face.run((assets_dir / "astronaut.png").read_bytes())["detections"]) == 1
    stats = face.stats()
    assert stats["errors"] == 1 and stats["count"] == 1


def test_stats_report_percentiles_memory_and_init(face: Agent, assets_dir: Path) -> None:
    data = (assets_dir / "coffee.png").read_bytes()
    for _ in range(20):
        face.run(data)
    s = face.stats()
    assert s["count"] == 20
    assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["throughput_per_s"] > 0
    assert s["inference"]["count"] == 20  # warm-up is not counted
    assert s["inference"]["p50_ms"] <= s["p50_ms"]  # inference is part of the whole run
    assert s["rss_bytes"] > 10 * 2**20 and s["init_ms"] > 0
    assert s["threads"] == 1 and s["runtime"].endswith(".interpreter")


def test_latency_ring_is_bounded() -> None:
    from fieldbox.agents.latency import LatencyRing

    ring = LatencyRing(capacity=4)
    for v in range(10):
        ring.record(float(v))
    assert ring.recent() == [6.0, 7.0, 8.0, 9.0]
    assert ring.count == 10 and ring.total_s == sum(range(10))
    assert ring.summary()["p50_ms"] == pytest.approx(7500.0)


def test_self_test_with_synthetic_input_and_with_a_sample(
    models_env: Path, tmp_path: Path, assets_dir: Path
) -> None:
    load_agent(OVERLAY / "face-detector.toml").self_test()
    shutil.copy(assets_dir / "astronaut.png", tmp_path / "sample.png")
    good = write_manifest(
        tmp_path, "good", self_test='{ sample = "sample.png", min_results = 1, max_results = 1 }'
    )
    load_agent(good).self_test()
    bad = write_manifest(tmp_path, "bad", self_test='{ sample = "coffee.png", min_results = 1 }')
    with pytest.raises(ModelError, match="0 detection"):
        load_agent(bad).self_test()
    missing = write_manifest(tmp_path, "missing", self_test='{ sample = "nope.png" }')
    with pytest.raises(ModelError, match="nope.png"):
        load_agent(missing).self_test()


def test_threads_come_from_the_manifest(models_env: Path, tmp_path: Path) -> None:
    agent = load_agent(write_manifest(tmp_path))
    assert agent.interpreter.threads == 2


def test_model_resolution_sha_and_corruption(
    models_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path)
    # Found through FIELDBOX_MODELS...
    assert load_agent(manifest).model_path.parent == models_env
    # ...but a copy next to the manifest wins.
    local = tmp_path / "face_detection_short_range.tflite"
    shutil.copy(models_env / local.name, local)
    assert load_agent(manifest).model_path == local
    # A corrupted byte: sha256 mismatch, named as such.
    data = bytearray(local.read_bytes())
    data[1000] ^= 0xFF
    local.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_agent(manifest)
    # Nowhere to be found.
    local.unlink()
    monkeypatch.setenv("FIELDBOX_MODELS", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="not found"):
        load_agent(manifest)


def test_a_non_tflite_file_with_the_right_checksum_is_a_model_error(tmp_path: Path) -> None:
    import hashlib

    junk = b"PK\x03\x04 this is not a model" * 10
    (tmp_path / "junk.tflite").write_bytes(junk)
    (tmp_path / "junk.toml").write_text(
        f'name = "junk"\nkind = "tensor"\n[model]\npath = "junk.tflite"\n'
        f'sha256 = "{hashlib.sha256(junk).hexdigest()}"\n'
    )
    with pytest.raises(ModelError, match="not a TFLite model"):
        load_agent(tmp_path / "junk.toml")


def test_declared_input_spec_is_checked_against_the_model(models_env: Path, tmp_path: Path) -> None:
    path = write_manifest(tmp_path)
    path.write_text(path.read_text() + "[input]\nshape = [1, 224, 224, 3]\n")
    with pytest.raises(ConfigError, match=r"input.shape.*\[1, 128, 128, 3\]"):
        load_agent(path)
    path = write_manifest(tmp_path)
    path.write_text(path.read_text() + '[input]\ndtype = "uint8"\n')
    with pytest.raises(ConfigError, match="float32"):
        load_agent(path)


def test_load_agents_by_name_duplicates_and_error_collection(models_env: Path, tmp_path: Path) -> None:
    write_manifest(tmp_path, "one")
    write_manifest(tmp_path, "two")
    (tmp_path / "notes.txt").write_text("not a manifest")
    agents = load_agents(tmp_path)
    assert sorted(agents) == ["one", "two"]
    (tmp_path / "three.json").write_text('{"name": "one", "kind": "tensor"}')
    with pytest.raises(ConfigError):
        load_agents(tmp_path)
    errors: dict[Path, FieldboxError] = {}
    assert sorted(load_agents(tmp_path, errors=errors)) == ["one", "two"]
    assert list(errors) == [tmp_path / "three.json"]
    with pytest.raises(ConfigError, match="not a directory"):
        load_agents(tmp_path / "nope")


def test_shipped_overlay_manifests_all_load(models_env: Path) -> None:
    errors: dict[Path, FieldboxError] = {}
    agents = load_agents(OVERLAY, errors=errors)
    assert "face-detector" in agents
    # Manifests whose models another part of the build makes may be missing here; nothing else may fail.
    assert all(isinstance(e, ModelError) and "not found" in str(e) for e in errors.values()), errors


def test_run_is_safe_from_several_threads(face: Agent, assets_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = (assets_dir / "astronaut.png").read_bytes()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: face.run(data), range(16)))
    boxes = {json.dumps(r["detections"]) for r in results}
    assert len(boxes) == 1


def test_grayscale_and_rgba_and_exif_rotated_images(face: Agent, assets_dir: Path) -> None:
    img = Image.open(assets_dir / "astronaut.png").convert("RGB")
    for mode in ("L", "RGBA", "P"):
        buf = io.BytesIO()
        img.convert(mode).save(buf, format="PNG")
        assert len(face.run(buf.getvalue())["detections"]) == 1, mode
    # Stored rotated with an EXIF orientation tag saying "rotate back": still one face, upright.
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to view
    img.rotate(90, expand=True).save(buf, format="JPEG", exif=exif.tobytes())
    faces = face.run(buf.getvalue())["detections"]
    assert len(faces) == 1
    assert np.isclose(faces[0]["box"]["xmin"], 177, atol=15)


def test_oversized_images_are_refused_before_decoding(models_env: Path, tmp_path: Path) -> None:
    path = write_manifest(tmp_path)
    path.write_text(path.read_text().replace("[preprocess]\n", "[preprocess]\nmax_pixels = 10000\n"))
    agent = load_agent(path)
    buf = io.BytesIO()
    Image.new("RGB", (200, 100)).save(buf, format="PNG")
    with pytest.raises(InputError, match="200x100 pixels, more than the 10000 allowed"):
        agent.run(buf.getvalue())
