"""Input limits scaled to memory, the file's overrides, and what each limit does to an input."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldbox.agents import Agent
from fieldbox.agents.image import decode_image, set_pixel_cap
from fieldbox.errors import ConfigError, InputError
from fieldbox.ipc import Request
from fieldbox.limits import Limits, LimitsFile, MiB, for_memory, load_limits
from fieldbox.services.runner import RunnerService
from fieldbox.workflows.engine import read_item_file
from fieldbox.workflows.items import Item

REPO = Path(__file__).resolve().parents[2]


def test_scaled_to_memory_as_the_table_says() -> None:
    assert for_memory(512 * MiB, 4) == Limits(16 * MiB, 11_184_810, 2)
    assert for_memory(2048 * MiB, 4) == Limits(64 * MiB, 44_739_242, 4)
    assert for_memory(128 * MiB, 1) == Limits(4 * MiB, 4_000_000, 1)
    assert for_memory(8192 * MiB, 8).max_decoded_pixels == 64_000_000
    assert for_memory(512 * MiB, 4, LimitsFile(max_item_bytes=1000, decode_slots=3)) == Limits(
        1000, 11_184_810, 3
    )


def test_the_shipped_file_scales_everything_and_bad_keys_are_named(tmp_path: Path) -> None:
    shipped = load_limits(REPO / "rootfs-overlay/etc/fieldbox/limits.toml")
    assert shipped == load_limits(tmp_path / "absent.toml")
    bad = tmp_path / "limits.toml"
    bad.write_text("decode_slots = -1\n")
    with pytest.raises(ConfigError, match="decode_slots"):
        load_limits(bad)


def test_an_input_over_the_item_limit_fails_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"x" * 2000)
    item = Item(workflow="w", name="big.jpg", origin="inbox", path=path)
    assert read_item_file(item, max_bytes=2000) == b"x" * 2000
    with pytest.raises(InputError, match="2000 bytes is over the 1999-byte limit"):
        read_item_file(item, max_bytes=1999)


def jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(1)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def test_a_large_jpeg_is_decoded_at_the_scale_the_model_needs() -> None:
    data = jpeg(4000, 3000)
    assert decode_image(data).size == (4000, 3000)
    assert decode_image(data, at_least=(256, 256)).size == (500, 375)  # 1/8 covers 256 x 256
    # the pixel cap counts what is decoded: 12 Mpx refused whole, taken at 1/8
    set_pixel_cap(1_000_000)
    try:
        with pytest.raises(InputError, match="more than the 1000000 allowed"):
            decode_image(data)
        assert decode_image(data, at_least=(256, 256)).size == (500, 375)
        png = io.BytesIO()
        Image.new("RGB", (1200, 1000)).save(png, format="PNG")
        with pytest.raises(InputError, match="1200x1000 pixels"):
            decode_image(png.getvalue(), at_least=(256, 256))  # no scaled decode for PNG
    finally:
        set_pixel_cap(None)


@pytest.fixture
def detector(face_detector: Agent) -> Agent:
    return face_detector


def test_a_12_megapixel_photo_finds_the_face_its_small_copy_finds(detector: Agent, assets_dir: Path) -> None:
    with Image.open(assets_dir / "astronaut.png") as img:
        big = img.convert("RGB").resize((4000, 4000), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    big.save(out, format="JPEG", quality=92)
    faces = detector.run(out.getvalue())["detections"]
    assert len(faces) == 1 and faces[0]["score"] > 0.8
    box = faces[0]["box"]  # in the big photo's pixels: about 8x the 512-px box (x 180-270, y 75-180)
    assert 1300 <= box["xmin"] <= 1600 and 2000 <= box["xmax"] <= 2300


def test_the_runner_works_on_at_most_decode_slots_requests() -> None:
    inside = {"now": 0, "peak": 0}
    lock = threading.Lock()

    class Slow:
        def run(self, data: bytes) -> dict[str, int]:
            with lock:
                inside["now"] += 1
                inside["peak"] = max(inside["peak"], inside["now"])
            time.sleep(0.1)
            with lock:
                inside["now"] -= 1
            return {}

    service = RunnerService({"slow": Slow()}, {}, decode_slots=2)  # type: ignore[dict-item]
    request = Request(op="run", id=1, fields={"agent": "slow"}, payload=b"x")
    threads = [threading.Thread(target=service.handle, args=(request,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside["peak"] == 2
