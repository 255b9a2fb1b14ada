"""The BlazeFace image detector on real photographs, and its SSD building blocks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldbox.agents import Agent
from fieldbox.agents.detector import Decoded, generate_anchors, iou, non_max_suppression
from fieldbox.agents.manifest import AnchorSpec


@pytest.fixture
def detector(face_detector: Agent) -> Agent:
    return face_detector


def test_short_range_anchors_match_mediapipe() -> None:
    anchors = generate_anchors(AnchorSpec())
    assert anchors.shape == (896, 4)
    # Layer 0: 16x16 cells, 2 anchors each, centres at (x + 0.5) / 16.
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    assert np.allclose(anchors[1], anchors[0])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1, 1])
    assert np.allclose(anchors[511], [15.5 / 16, 15.5 / 16, 1, 1])
    # Layers 1-3 share stride 16: 8x8 cells, 6 anchors each.
    assert np.allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8, 1, 1]] * 6)
    assert np.allclose(anchors[518], [1.5 / 8, 0.5 / 8, 1, 1])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8, 1, 1])


def test_anchor_sizes_when_not_fixed() -> None:
    anchors = generate_anchors(AnchorSpec(fixed_anchor_size=False))
    # First layer: scale 0.1484375 at aspect 1, then sqrt(scale * next scale).
    first = 0.1484375
    second = first + (0.75 - first) / 3
    assert np.allclose(anchors[0, 2:], [first, first])
    assert np.allclose(anchors[1, 2:], [np.sqrt(first * second)] * 2)


def test_iou() -> None:
    box = np.array([0, 0, 2, 2], dtype=np.float32)
    others = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6], [0, 0, 0, 0]], dtype=np.float32)
    assert np.allclose(iou(box, others), [1.0, 1 / 7, 0.0, 0.0])


def _decoded(boxes: list[list[float]], scores: list[float]) -> Decoded:
    b = np.asarray(boxes, dtype=np.float32)
    kp = np.stack([b[:, :2], b[:, 2:]], axis=1)  # 2 keypoints: the box corners
    return Decoded(np.asarray(scores, dtype=np.float32), b, kp)


def test_weighted_nms_merges_overlapping_boxes_by_score() -> None:
    found = _decoded([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.6, 0.8])
    kept = non_max_suppression(found, iou_threshold=0.3, mode="weighted", max_results=10)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.8])
    # The first group is the score-weighted mean of boxes 0 and 1; its score is the best one's.
    expected = (np.array([0, 0, 10, 10]) * 0.9 + np.array([1, 1, 11, 11]) * 0.6) / 1.5
    assert np.allclose(kept.boxes[0], expected)
    assert np.allclose(kept.keypoints[0, 0], expected[:2])
    assert np.allclose(kept.boxes[1], [50, 50, 60, 60])


def test_hard_nms_keeps_the_best_box_and_none_keeps_all() -> None:
    found = _decoded([[0, 0, 10, 10], [1, 1, 11, 11]], [0.6, 0.9])
    hard = non_max_suppression(found, 0.3, "hard", 10)
    assert np.allclose(hard.boxes, [[1, 1, 11, 11]])
    assert len(non_max_suppression(found, 0.3, "none", 10).scores) == 2
    assert len(non_max_suppression(found, 0.99, "weighted", 10).scores) == 2  # IoU 0.68 < 0.99


def test_astronaut_has_one_face_where_her_face_is(detector: Agent, assets_dir: Path) -> None:
    result = detector.run((assets_dir / "astronaut.png").read_bytes())
    assert len(result["detections"]) == 1
    face = result["detections"][0]
    box = face["box"]
    # By eye (512x512 image): her face spans about x 180-270, y 75-180 (hairline to chin);
    # eyes at about y 105-115, mouth at about y 145.
    assert 165 <= box["xmin"] <= 195 and 255 <= box["xmax"] <= 285
    assert 65 <= box["ymin"] <= 95 and 160 <= box["ymax"] <= 190
    assert face["score"] > 0.8
    right_eye, left_eye, mouth = (face["keypoints"][k] for k in ("right_eye", "left_eye", "mouth"))
    assert right_eye[0] < left_eye[0]  # the subject's right eye is on the image's left
    assert 95 <= right_eye[1] <= 120 and 95 <= left_eye[1] <= 120
    assert 135 <= mouth[1] <= 160 and 205 <= mouth[0] <= 235
    for x, y in face["keypoints"].values():
        assert box["xmin"] - 5 <= x <= box["xmax"] + 5 and box["ymin"] - 5 <= y <= box["ymax"] + 5


def test_cameraman_has_one_face(detector: Agent, assets_dir: Path) -> None:
    result = detector.run((assets_dir / "camera.png").read_bytes())  # a grayscale image
    assert len(result["detections"]) == 1
    box = result["detections"][0]["box"]
    # By eye: his face (in profile, looking through the camera) spans about x 180-265, y 120-210.
    assert 165 <= box["xmin"] <= 195 and 250 <= box["xmax"] <= 280
    assert 105 <= box["ymin"] <= 135 and 195 <= box["ymax"] <= 225


@pytest.mark.parametrize("name", ["coffee.png", "brick.png", "grass.png", "hubble_deep_field.jpg"])
def test_images_without_faces_have_none(detector: Agent, assets_dir: Path, name: str) -> None:
    assert detector.run((assets_dir / name).read_bytes())["detections"] == []


@pytest.mark.parametrize(
    ("crop", "canvas_size", "at"),
    [
        ((0, 0, 512, 512), (512, 640), (0, 64)),  # padded above and below
        ((0, 0, 512, 512), (640, 512), (64, 0)),  # padded left and right
        ((100, 0, 400, 300), (320, 420), (20, 80)),  # cropped, then padded on all sides
    ],
)
def test_letterbox_maps_boxes_back_to_the_original_image(
    detector: Agent,
    assets_dir: Path,
    crop: tuple[int, int, int, int],
    canvas_size: tuple[int, int],
    at: tuple[int, int],
) -> None:
    """The same face moved to another place of another canvas is found at the moved place."""
    face = Image.open(assets_dir / "astronaut.png").convert("RGB").crop(crop)
    canvas = Image.new("RGB", canvas_size, (90, 90, 90))
    canvas.paste(face, at)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    plain = detector.run((assets_dir / "astronaut.png").read_bytes())["detections"][0]["box"]
    result = detector.run(buf.getvalue())["detections"]
    assert len(result) == 1
    moved = result[0]["box"]
    dx, dy = at[0] - crop[0], at[1] - crop[1]
    # The model sees the face at another scale (0.20-0.43 instead of 0.25), so its box
    # wobbles by a couple of model pixels; a mapping error would be tens of pixels off.
    assert moved["xmin"] - dx == pytest.approx(plain["xmin"], abs=10)
    assert moved["xmax"] - dx == pytest.approx(plain["xmax"], abs=10)
    assert moved["ymin"] - dy == pytest.approx(plain["ymin"], abs=10)
    assert moved["ymax"] - dy == pytest.approx(plain["ymax"], abs=10)


def test_placement_maps_model_coordinates_exactly() -> None:
    from fieldbox.agents.image import ImageGeometry, fit
    from fieldbox.agents.manifest import ImagePreprocess

    geometry = ImageGeometry(height=128, width=128, channels=3, layout="NHWC")
    image = Image.new("RGB", (200, 100))
    fitted, placement = fit(image, geometry, ImagePreprocess(resize="letterbox"))
    assert fitted.size == (128, 128)
    assert (placement.offset_x, placement.offset_y) == (0, 32)  # 128x64 picture, bars above/below
    x, y = placement.to_original(np.array([0.0, 0.5, 1.0]), np.array([0.25, 0.5, 0.75]))
    assert np.allclose(x, [0, 100, 200]) and np.allclose(y, [0, 50, 100])
    _, crop = fit(image, geometry, ImagePreprocess(resize="center-crop"))
    x, y = crop.to_original(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    assert np.allclose(x, [50, 150]) and np.allclose(y, [0, 100])
    _, stretch = fit(image, geometry, ImagePreprocess(resize="stretch"))
    x, y = stretch.to_original(np.array([0.5]), np.array([0.5]))
    assert np.allclose(x, [100]) and np.allclose(y, [50])


def test_jpeg_and_png_give_the_same_face(detector: Agent, assets_dir: Path) -> None:
    buf = io.BytesIO()
    Image.open(assets_dir / "astronaut.png").convert("RGB").save(buf, format="JPEG", quality=90)
    png = detector.run((assets_dir / "astronaut.png").read_bytes())["detections"][0]["box"]
    jpg = detector.run(buf.getvalue())["detections"]
    assert len(jpg) == 1
    for key in png:
        assert jpg[0]["box"][key] == pytest.approx(png[key], abs=4)
