"""Any copy of a photo the decoder can open gives the face detector the answer its 8-bit RGB copy gives:
palette, bilevel, grey, grey+alpha, RGBA, CMYK, 16-bit, 32-bit and float images (PNG and TIFF),
cropped anywhere (hypothesis). Pillow's own ``convert`` clips wide samples; the agent scales them."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fieldbox.agents import Agent
from fieldbox.agents.image import to_mode


@pytest.fixture
def detector(face_detector: Agent) -> Agent:
    return face_detector


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def grey16(rgb: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)


def with_alpha(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.putalpha(255)
    return image


# mode -> (the copy in that mode, its 8-bit RGB copy, the format that keeps it as it is)
Variant = Callable[[Image.Image], tuple[Image.Image, Image.Image, str]]
VARIANTS: dict[str, Variant] = {
    "L": lambda rgb: (rgb.convert("L"), rgb.convert("L").convert("RGB"), "PNG"),
    "LA": lambda rgb: (with_alpha(rgb.convert("L")), rgb.convert("L").convert("RGB"), "PNG"),
    "P": lambda rgb: (p := rgb.quantize(256), p.convert("RGB"), "PNG"),
    "1": lambda rgb: (b := rgb.convert("1"), b.convert("RGB"), "PNG"),
    "RGBA": lambda rgb: (with_alpha(rgb), rgb, "PNG"),
    "CMYK": lambda rgb: (c := rgb.convert("CMYK"), c.convert("RGB"), "TIFF"),
    "I;16": lambda rgb: (grey16(rgb), rgb.convert("L").convert("RGB"), "PNG"),
    "I": lambda rgb: (grey16(rgb).convert("I"), rgb.convert("L").convert("RGB"), "TIFF"),
    "F": lambda rgb: (
        Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0),
        rgb.convert("L").convert("RGB"),
        "TIFF",
    ),
}


def same_answer(a: dict[str, object], b: dict[str, object]) -> None:
    da, db = a["detections"], b["detections"]
    assert isinstance(da, list) and isinstance(db, list)
    assert len(da) == len(db), (da, db)
    for x, y in zip(da, db, strict=True):
        assert abs(x["score"] - y["score"]) < 0.02, (x, y)
        for k in ("xmin", "ymin", "xmax", "ymax"):
            assert abs(x["box"][k] - y["box"][k]) < 1.5, (k, x["box"], y["box"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(sorted(VARIANTS)),
    crop=st.tuples(st.integers(0, 120), st.integers(0, 60), st.integers(0, 120), st.integers(0, 200)),
)
def test_every_mode_gives_the_answer_of_its_rgb_copy(
    detector: Agent, assets_dir: Path, mode: str, crop: tuple[int, int, int, int]
) -> None:
    with Image.open(assets_dir / "astronaut.png") as img:
        rgb = img.convert("RGB")
    left, top, right, bottom = crop
    rgb = rgb.crop((left, top, rgb.width - right, rgb.height - bottom))
    copy, reference, fmt = VARIANTS[mode](rgb)
    data = encode(copy, fmt)
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == copy.mode or (mode == "I;16" and back.mode.startswith("I"))
    same_answer(detector.run(data), detector.run(encode(reference, "PNG")))


def test_a_16_bit_photo_still_has_its_face(detector: Agent, assets_dir: Path) -> None:
    with Image.open(assets_dir / "astronaut.png") as img:
        data = encode(grey16(img.convert("RGB")), "PNG")
    assert len(detector.run(data)["detections"]) == 1  # Pillow's clipping convert would give white


def test_wide_samples_are_scaled_not_clipped() -> None:
    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    assert np.array_equal(np.asarray(to_mode(Image.fromarray(ramp), "L")), np.arange(256).reshape(16, 16))
    small = Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16))  # "I" holding 8-bit values
    assert np.array_equal(np.asarray(to_mode(small, "L")), np.arange(256).reshape(16, 16))
    unit = Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16))
    assert np.array_equal(np.asarray(to_mode(unit, "L")), np.arange(256).reshape(16, 16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), fmt=st.sampled_from(["PNG", "JPEG", "TIFF", "GIF", "BMP"]))
def test_the_decoder_the_runner_runs_answers_damaged_images_with_input_error_only(
    assets_dir: Path, data: st.DataObject, fmt: str
) -> None:
    from fieldbox.agents.image import decode_image
    from fieldbox.errors import InputError

    with Image.open(assets_dir / "astronaut.png") as img:
        blob = bytearray(encode(img.convert("RGB").resize((64, 64)), fmt))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(blob)))
    try:
        image = decode_image(bytes(blob[:cut]), at_least=(256, 256))
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert to_mode(image, "RGB").mode == "RGB"
