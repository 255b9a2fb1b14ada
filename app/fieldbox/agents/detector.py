"""Image detector: SSD-style models such as BlazeFace, with MediaPipe's own decoding.

What MediaPipe's face-detection graph does around ``face_detection_short_range.tflite``,
done here in numpy:

1. **Anchors** (``SsdAnchorsCalculator``): one anchor per feature-map cell and
   aspect ratio, layers of equal stride merged; for the short-range model 4
   layers, strides 8/16/16/16, fixed anchor size -> 16x16x2 + 8x8x6 = 896.
2. **Decoding** (``TensorsToDetectionsCalculator``): regressor offsets divided by
   the x/y/w/h scales, moved by the anchor centre (and scaled by its size) into
   normalised box centre/size and keypoints; the raw score is clipped to
   +-``score_clipping_thresh`` and passed through a sigmoid.
3. **Weighted NMS** (``NonMaxSuppressionCalculator``, ``WEIGHTED``, IoU): the
   highest-scoring box absorbs every box overlapping it by more than the IoU
   threshold, its coordinates becoming the score-weighted mean of the group.

Boxes and keypoints are then mapped back through the letterbox into pixels of
the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fieldbox.agents.base import Prepared
from fieldbox.agents.image import ImageGeometry, Placement, dequantize, prepare_image
from fieldbox.agents.interpreter import Array, Interpreter
from fieldbox.agents.manifest import AgentManifest, AnchorSpec, BoxDecodeSpec
from fieldbox.errors import ConfigError, ModelError


def _layer_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def generate_anchors(spec: AnchorSpec) -> Array:
    """SSD anchors as an (N, 4) float32 array of (x_center, y_center, width, height), normalised.

    A line-by-line port of MediaPipe's ``SsdAnchorsCalculator::GenerateAnchors``.
    """
    if len(spec.strides) != spec.num_layers:
        raise ConfigError(
            f"postprocess.anchors: {len(spec.strides)} strides for {spec.num_layers} layers",
            "give one stride per layer",
        )
    anchors: list[tuple[float, float, float, float]] = []
    layer_id = 0
    n = len(spec.strides)
    while layer_id < spec.num_layers:
        heights: list[float] = []
        widths: list[float] = []
        ratios: list[float] = []
        scales: list[float] = []
        last = layer_id
        while last < n and spec.strides[last] == spec.strides[layer_id]:
            scale = _layer_scale(spec.min_scale, spec.max_scale, last, n)
            if last == 0 and spec.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ratio in spec.aspect_ratios:
                    ratios.append(ratio)
                    scales.append(scale)
                if spec.interpolated_scale_aspect_ratio > 0.0:
                    scale_next = (
                        1.0 if last == n - 1 else _layer_scale(spec.min_scale, spec.max_scale, last + 1, n)
                    )
                    scales.append(math.sqrt(scale * scale_next))
                    ratios.append(spec.interpolated_scale_aspect_ratio)
            last += 1
        for ratio, scale in zip(ratios, scales, strict=True):
            root = math.sqrt(ratio)
            heights.append(scale / root)
            widths.append(scale * root)
        stride = spec.strides[layer_id]
        fm_h = math.ceil(spec.input_size_height / stride)
        fm_w = math.ceil(spec.input_size_width / stride)
        for y in range(fm_h):
            for x in range(fm_w):
                for k in range(len(heights)):
                    xc = (x + spec.anchor_offset_x) / fm_w
                    yc = (y + spec.anchor_offset_y) / fm_h
                    if spec.fixed_anchor_size:
                        anchors.append((xc, yc, 1.0, 1.0))
                    else:
                        anchors.append((xc, yc, widths[k], heights[k]))
        layer_id = last
    return np.asarray(anchors, dtype=np.float32)


@dataclass(frozen=True)
class Decoded:
    """Candidate detections in normalised model coordinates."""

    scores: Array  # (M,)
    boxes: Array  # (M, 4): xmin, ymin, xmax, ymax
    keypoints: Array  # (M, K, 2): x, y


def decode(
    raw_boxes: Array, raw_scores: Array, anchors: Array, spec: BoxDecodeSpec, min_score: float
) -> Decoded:
    """Decode regressors (N, num_coords) and raw scores (N,) for anchors (N, 4); keep scores >= min_score."""
    scores = raw_scores.astype(np.float64)  # float32 exp(100) overflows; float64 does not
    if spec.sigmoid_score:
        clip = spec.score_clipping_thresh
        scores = 1.0 / (1.0 + np.exp(-np.clip(scores, -clip, clip)))
    keep = np.nonzero(scores >= min_score)[0]
    scores = scores[keep]
    raw = raw_boxes[keep].astype(np.float32)
    anc = anchors[keep]
    o = spec.box_coord_offset
    if spec.reverse_output_order:
        xc, yc, w, h = raw[:, o], raw[:, o + 1], raw[:, o + 2], raw[:, o + 3]
    else:
        yc, xc, h, w = raw[:, o], raw[:, o + 1], raw[:, o + 2], raw[:, o + 3]
    ax, ay, aw, ah = anc[:, 0], anc[:, 1], anc[:, 2], anc[:, 3]
    xc = xc / spec.x_scale * aw + ax
    yc = yc / spec.y_scale * ah + ay
    h = h / spec.h_scale * ah
    w = w / spec.w_scale * aw
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    k = spec.num_keypoints
    kp = np.zeros((len(keep), k, 2), dtype=np.float32)
    for i in range(k):
        base = spec.keypoint_coord_offset + i * spec.num_values_per_keypoint
        first, second = raw[:, base], raw[:, base + 1]
        kx, ky = (first, second) if spec.reverse_output_order else (second, first)
        kp[:, i, 0] = kx / spec.x_scale * aw + ax
        kp[:, i, 1] = ky / spec.y_scale * ah + ay
    return Decoded(scores=scores, boxes=boxes, keypoints=kp)


def iou(box: Array, boxes: Array) -> Array:
    """Intersection over union of one (4,) box with each of (M, 4) boxes (xmin, ymin, xmax, ymax)."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    out: Array = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return out


def non_max_suppression(found: Decoded, iou_threshold: float, mode: str, max_results: int) -> Decoded:
    """MediaPipe's NMS: ``weighted`` (score-weighted merge of each group), ``hard`` (keep the best), ``none``.

    As in ``NonMaxSuppressionCalculator``, a box joins the group of the current
    best box when their IoU is strictly greater than ``iou_threshold``; the
    group's score is the best box's score.
    """
    order = np.argsort(-found.scores, kind="stable")
    if mode == "none":
        order = order[:max_results]
        return Decoded(found.scores[order], found.boxes[order], found.keypoints[order])
    scores: list[float] = []
    boxes: list[Array] = []
    kps: list[Array] = []
    remaining = order
    while remaining.size and len(scores) < max_results:
        best = remaining[0]
        overlap = iou(found.boxes[best], found.boxes[remaining])
        group = remaining[overlap > iou_threshold]
        group = group if group.size else remaining[:1]
        remaining = remaining[~(overlap > iou_threshold)]
        remaining = remaining[remaining != best]
        scores.append(float(found.scores[best]))
        if mode == "weighted":
            weights = found.scores[group]
            total = float(weights.sum())
            boxes.append((found.boxes[group] * weights[:, None]).sum(axis=0) / total)
            kps.append((found.keypoints[group] * weights[:, None, None]).sum(axis=0) / total)
        else:
            boxes.append(found.boxes[best])
            kps.append(found.keypoints[best])
    k = found.keypoints.shape[1]
    return Decoded(
        scores=np.asarray(scores, dtype=np.float32),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        keypoints=np.asarray(kps, dtype=np.float32).reshape(-1, k, 2),
    )


class ImageDetector:
    """Agent kind ``image-detector``: an SSD model with anchors (BlazeFace and relatives)."""

    kind_name = "image-detector"

    def __init__(self, manifest: AgentManifest, interpreter: Interpreter) -> None:
        post = manifest.postprocess
        if post.kind not in ("default", "ssd-anchors"):
            raise ConfigError(
                f"postprocess.kind {post.kind!r} is not one the image detector knows ('ssd-anchors')"
            )
        inputs = interpreter.input_details()
        if len(inputs) != 1:
            raise ModelError(f"an image detector needs a model with 1 input, this one has {len(inputs)}")
        self._input = inputs[0]
        self._pre = manifest.preprocess
        self._geometry = ImageGeometry.of(self._input, self._pre.layout)
        self._anchor_spec = post.anchors or AnchorSpec(
            input_size_height=self._geometry.height, input_size_width=self._geometry.width
        )
        self._decode_spec = post.decode or BoxDecodeSpec(
            x_scale=float(self._geometry.width),
            y_scale=float(self._geometry.height),
            w_scale=float(self._geometry.width),
            h_scale=float(self._geometry.height),
        )
        self._anchors = generate_anchors(self._anchor_spec)
        self._min_score = post.min_score
        self._iou = post.iou_threshold
        self._nms = post.nms
        self._max_results = post.max_results
        self._box_index, self._score_index = self._find_outputs(interpreter)
        names = self._decode_spec.keypoint_names
        self._keypoint_names = [
            names[i] if i < len(names) else f"keypoint_{i}" for i in range(self._decode_spec.num_keypoints)
        ]
        self._outputs = interpreter.output_details()
        need = self._decode_spec.keypoint_coord_offset + self._decode_spec.num_keypoints * (
            self._decode_spec.num_values_per_keypoint
        )
        if max(need, self._decode_spec.box_coord_offset + 4) > self._decode_spec.num_coords:
            raise ConfigError(
                f"postprocess.decode: boxes and keypoints need {need} values per anchor, num_coords is "
                f"{self._decode_spec.num_coords}"
            )

    def _find_outputs(self, interpreter: Interpreter) -> tuple[int, int]:
        """Which output is the regressors (N, num_coords) and which the scores (N, 1)."""
        outputs = interpreter.output_details()
        n = len(self._anchors)
        box = score = None
        for pos, detail in enumerate(outputs):
            shape = tuple(d for d in detail.shape if d != 1) or (1,)
            if shape == (n, self._decode_spec.num_coords) and box is None:
                box = pos
            elif shape == (n,) and score is None:
                score = pos
        if box is None or score is None:
            shapes = ", ".join(str(list(d.shape)) for d in outputs)
            raise ModelError(
                f"model outputs {shapes} do not match {n} anchors x {self._decode_spec.num_coords} "
                "coordinates and {n} scores",
                "check postprocess.anchors / postprocess.decode against the model",
            )
        return box, score

    @property
    def anchors(self) -> Array:
        """The generated anchors, (N, 4) normalised x_center, y_center, w, h."""
        return self._anchors

    def preprocess(self, data: bytes) -> Prepared:
        """Decode, letterbox (or as configured) and normalise one image."""
        tensor, placement = prepare_image(data, self._input, self._geometry, self._pre)
        return Prepared([tensor], {"placement": placement})

    def postprocess(self, outputs: list[Array], prepared: Prepared) -> dict[str, Any]:
        """Decode boxes, suppress overlaps, map to original pixels."""
        n = len(self._anchors)
        raw_boxes = dequantize(outputs[self._box_index], self._outputs[self._box_index]).reshape(n, -1)
        raw_scores = dequantize(outputs[self._score_index], self._outputs[self._score_index]).reshape(n)
        found = decode(raw_boxes, raw_scores, self._anchors, self._decode_spec, self._min_score)
        kept = non_max_suppression(found, self._iou, self._nms, self._max_results)
        placement = prepared.context.get("placement")
        return {"detections": self._to_json(kept, placement)}

    def _to_json(self, kept: Decoded, placement: Placement | None) -> list[dict[str, Any]]:
        boxes, kps = kept.boxes, kept.keypoints
        if placement is not None:
            x0, y0 = placement.to_original(boxes[:, 0], boxes[:, 1])
            x1, y1 = placement.to_original(boxes[:, 2], boxes[:, 3])
            w, h = placement.width, placement.height
            boxes = np.stack(
                [np.clip(x0, 0, w), np.clip(y0, 0, h), np.clip(x1, 0, w), np.clip(y1, 0, h)], axis=1
            )
            kx, ky = placement.to_original(kps[..., 0], kps[..., 1])
            kps = np.stack([kx, ky], axis=-1)
        results = []
        for i in range(len(kept.scores)):
            x0f, y0f, x1f, y1f = (round(float(v), 1) for v in boxes[i])
            results.append(
                {
                    "score": round(float(kept.scores[i]), 4),
                    "box": {"xmin": x0f, "ymin": y0f, "xmax": x1f, "ymax": y1f},
                    "keypoints": {
                        name: [round(float(kps[i, j, 0]), 1), round(float(kps[i, j, 1]), 1)]
                        for j, name in enumerate(self._keypoint_names)
                    },
                }
            )
        return results
