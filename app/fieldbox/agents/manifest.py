"""The agent manifest: one typed schema for every agent, TOML or JSON.

A manifest declares an agent: which model (and its sha256), which kind of
agent (image detector, image classifier, text classifier, raw tensors), how to
prepare inputs and read outputs, thresholds and threads. Example::

    name = "face-detector"
    kind = "image-detector"
    threads = 1

    [model]
    path = "face_detection_short_range.tflite"
    sha256 = "bbff11ce..."

    [preprocess]
    resize = "letterbox"
    mean = [127.5]
    std = [127.5]

    [postprocess]
    kind = "ssd-anchors"
    min_score = 0.5
    iou_threshold = 0.3

A relative model path (and labels, self-test sample, any path handed to
:meth:`AgentManifest.resolve`) is looked up next to the manifest first, then in
each of :func:`fieldbox.paths.model_dirs` (``FIELDBOX_MODELS``), so the same
file works on the device and on a developer's host. The sha256 is checked when
the model is loaded (:mod:`fieldbox.agents.runner`), not here, so parsing stays
cheap and pure.

``fieldbox agent check --schema`` prints every key with its type, default and
documentation (from :func:`fieldbox.schema.describe_schema`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fieldbox import paths, schema
from fieldbox.errors import ConfigError
from fieldbox.schema import doc_field, non_negative, positive, unit_interval

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")


def _name_ok(value: Any) -> str | None:
    if _NAME.match(value):
        return None
    return "must be 1-64 of a-z 0-9 . _ - starting with a letter or digit"


def _sha256_ok(value: Any) -> str | None:
    return None if _SHA256.match(value) else "must be 64 lowercase hex digits"


def _dims_ok(value: Any) -> str | None:
    if not value:
        return "must not be empty"
    if any(d < -1 or d == 0 for d in value):
        return "dimensions must be positive (or -1 for any)"
    return None


def _dtype_ok(value: Any) -> str | None:
    return None if value in DTYPES else f"must be one of {', '.join(DTYPES)}"


def _channels_ok(value: Any) -> str | None:
    if len(value) not in (1, 3):
        return "must have 1 value (all channels) or 3 (one per channel)"
    return None


def _std_ok(value: Any) -> str | None:
    problem = _channels_ok(value)
    if problem:
        return problem
    return None if all(v != 0 for v in value) else "must not contain 0"


def _strides_ok(value: Any) -> str | None:
    if not value:
        return "must not be empty"
    return None if all(v > 0 for v in value) else "strides must be positive"


@dataclass(frozen=True)
class ModelSpec:
    """The model file and the checksum it must have."""

    path: str = doc_field("model file; relative paths resolve next to the manifest, then FIELDBOX_MODELS")
    sha256: str = doc_field("sha256 of the model file (hex); a mismatch refuses to load", check=_sha256_ok)


@dataclass(frozen=True)
class InputSpec:
    """What the model's first input must look like (checked against the model at load)."""

    shape: list[int] | None = doc_field(
        "expected input shape, e.g. [1, 128, 128, 3]; -1 matches any size", default=None, check=_dims_ok
    )
    dtype: str | None = doc_field("expected input dtype, e.g. 'float32'", default=None, check=_dtype_ok)


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes the model's input tensor.

    Pixels (0-255) become ``(pixel - mean) / std``; for a quantized (int8/uint8)
    input that real value is then quantized with the model's own scale and zero
    point, so the same mean/std describe a float and a quantized model.
    """

    resize: Literal["stretch", "letterbox", "center-crop"] = doc_field(
        "stretch: ignore aspect; letterbox: keep aspect and pad; center-crop: keep aspect and crop",
        default="stretch",
    )
    color: Literal["rgb", "bgr", "gray"] = doc_field("channel order the model expects", default="rgb")
    layout: Literal["NHWC", "NCHW"] = doc_field("tensor layout of the model input", default="NHWC")
    mean: list[float] = doc_field(
        "subtracted from each 0-255 pixel (1 value or 1 per channel)",
        default_factory=lambda: [0.0],
        check=_channels_ok,
    )
    std: list[float] = doc_field(
        "divides each pixel after the mean (1 value or 1 per channel)",
        default_factory=lambda: [1.0],
        check=_std_ok,
    )
    pad_value: int = doc_field("0-255 value of letterbox padding", default=0)
    filter: Literal["bilinear", "nearest", "bicubic", "box"] = doc_field(
        "resampling filter", default="bilinear"
    )
    max_pixels: int = doc_field(
        "refuse images with more pixels than this (decompression bombs)",
        default=64_000_000,
        check=positive,
    )


@dataclass(frozen=True)
class AnchorSpec:
    """SSD anchor generation (MediaPipe's SsdAnchorsCalculatorOptions)."""

    num_layers: int = doc_field("number of feature-map layers", default=4, check=positive)
    strides: list[int] = doc_field(
        "stride of each layer", default_factory=lambda: [8, 16, 16, 16], check=_strides_ok
    )
    min_scale: float = doc_field("anchor scale of the first layer", default=0.1484375)
    max_scale: float = doc_field("anchor scale of the last layer", default=0.75)
    input_size_height: int = doc_field("model input height the anchors refer to", default=128, check=positive)
    input_size_width: int = doc_field("model input width the anchors refer to", default=128, check=positive)
    anchor_offset_x: float = doc_field("anchor centre offset within a cell", default=0.5)
    anchor_offset_y: float = doc_field("anchor centre offset within a cell", default=0.5)
    aspect_ratios: list[float] = doc_field("aspect ratios per layer", default_factory=lambda: [1.0])
    interpolated_scale_aspect_ratio: float = doc_field(
        "extra anchor with the interpolated scale (0 disables)", default=1.0
    )
    fixed_anchor_size: bool = doc_field("anchors have width = height = 1", default=True)
    reduce_boxes_in_lowest_layer: bool = doc_field("3 fixed anchors in layer 0", default=False)


@dataclass(frozen=True)
class BoxDecodeSpec:
    """How raw SSD regressors become boxes and keypoints (TensorsToDetectionsCalculator)."""

    num_coords: int = doc_field("values per anchor in the regressor tensor", default=16, check=positive)
    box_coord_offset: int = doc_field("index of the box's first value", default=0, check=non_negative)
    keypoint_coord_offset: int = doc_field("index of the first keypoint value", default=4, check=non_negative)
    num_keypoints: int = doc_field("keypoints per detection", default=6, check=non_negative)
    num_values_per_keypoint: int = doc_field("values per keypoint", default=2, check=positive)
    x_scale: float = doc_field("divides x offsets", default=128.0, check=positive)
    y_scale: float = doc_field("divides y offsets", default=128.0, check=positive)
    w_scale: float = doc_field("divides widths", default=128.0, check=positive)
    h_scale: float = doc_field("divides heights", default=128.0, check=positive)
    reverse_output_order: bool = doc_field("values are x, y, w, h (not y, x, h, w)", default=True)
    sigmoid_score: bool = doc_field("apply a sigmoid to raw scores", default=True)
    score_clipping_thresh: float = doc_field(
        "clip raw scores to +-this before the sigmoid", default=100.0, check=positive
    )
    keypoint_names: list[str] = doc_field(
        "names of the keypoints, in order",
        default_factory=lambda: ["right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear"],
    )


@dataclass(frozen=True)
class PostprocessSpec:
    """How outputs become a result, and the thresholds that apply."""

    kind: str = doc_field(
        "detector: 'ssd-anchors'; classifier: 'scores' (probabilities), 'logits' (apply softmax); "
        "tensor: 'raw'; plug-in kinds define their own",
        default="default",
    )
    min_score: float = doc_field(
        "detector: drop detections scoring below this; classifier: 'label' is null when the best "
        "class scores below this (top_k lists the best classes regardless)",
        default=0.5,
        check=unit_interval,
    )
    iou_threshold: float = doc_field(
        "overlap above which detections merge (NMS)", default=0.3, check=unit_interval
    )
    nms: Literal["weighted", "hard", "none"] = doc_field(
        "non-maximum suppression: weighted (MediaPipe WEIGHTED), hard, or none", default="weighted"
    )
    top_k: int = doc_field("at most this many classes in a classification", default=5, check=positive)
    max_results: int = doc_field("at most this many detections", default=100, check=positive)
    softmax: bool | None = doc_field(
        "classifier: apply softmax to the outputs (default: only when kind = 'logits')", default=None
    )
    anchors: AnchorSpec | None = doc_field("SSD anchors (detector)", default=None)
    decode: BoxDecodeSpec | None = doc_field("SSD box decoding (detector)", default=None)


@dataclass(frozen=True)
class SelfTestSpec:
    """A sample the health check runs; without it a synthetic input of the right shape is used."""

    sample: str | None = doc_field("input file (image, text or .npy) to run", default=None)
    min_results: int | None = doc_field(
        "the sample must give at least this many detections", default=None, check=non_negative
    )
    max_results: int | None = doc_field(
        "the sample must give at most this many detections", default=None, check=non_negative
    )
    expect_label: str | None = doc_field("the sample's top label must be this", default=None)


@dataclass(frozen=True)
class AgentManifest:
    """One agent: a model, how to feed it and how to read it."""

    name: str = doc_field("agent name, unique on the device", check=_name_ok)
    kind: str = doc_field("agent kind: 'image-detector', 'image-classifier', 'text-classifier' or 'tensor'")
    model: ModelSpec = doc_field("the model file")
    description: str = doc_field("what the agent is for", default="")
    threads: int = doc_field("CPU threads for the interpreter (0 = all CPUs)", default=1, check=non_negative)
    warmup: int = doc_field(
        "inferences run at load before the agent counts as ready", default=1, check=non_negative
    )
    input: InputSpec = doc_field("expected input tensor", default_factory=InputSpec)
    preprocess: ImagePreprocess = doc_field("image preprocessing", default_factory=ImagePreprocess)
    postprocess: PostprocessSpec = doc_field("output postprocessing", default_factory=PostprocessSpec)
    labels: str | None = doc_field("labels file: one label per line, line N = class N", default=None)
    self_test: SelfTestSpec = doc_field("health-check sample", default_factory=SelfTestSpec)
    options: dict[str, Any] = doc_field("kind-specific settings (plug-in kinds)", default_factory=dict)
    source: Path | None = field(default=None, init=False, compare=False, repr=False)
    """The file the manifest was read from (set by :func:`load_manifest`, not by the file)."""

    @property
    def base_dir(self) -> Path | None:
        """The manifest's directory (None for a manifest built in memory)."""
        return self.source.parent if self.source is not None else None

    def resolve(self, name: str, what: str = "file") -> Path:
        """Find a file the manifest names: absolute, next to the manifest, then FIELDBOX_MODELS.

        Raises :class:`~fieldbox.errors.ConfigError` listing where it looked.
        """
        candidate = Path(name)
        if candidate.is_absolute():
            if candidate.is_file():
                return candidate
            raise ConfigError(f"{self.location}: {what} {name} not found")
        places = ([self.base_dir] if self.base_dir is not None else []) + paths.model_dirs()
        for place in places:
            path = place / candidate
            if path.is_file():
                return path
        looked = ", ".join(str(p) for p in places)
        raise ConfigError(
            f"{self.location}: {what} {name!r} not found (looked in {looked})",
            "set FIELDBOX_MODELS to the directory that holds it",
        )

    def model_path(self) -> Path:
        """The model file, resolved."""
        return self.resolve(self.model.path, "model")

    @property
    def location(self) -> str:
        """How errors name this manifest: its file, or the agent name when built in memory."""
        return str(self.source) if self.source is not None else f"agent {self.name}"


def parse_manifest(raw: Any, source: str = "<manifest>", path: Path | None = None) -> AgentManifest:
    """Validate a mapping as a manifest; every problem is a :class:`ConfigError`."""
    manifest = schema.parse(AgentManifest, raw, source=source)
    from fieldbox.agents.kinds import KINDS  # late: kinds imports the kind modules' names only

    if manifest.kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        raise ConfigError(f"{source}: kind: expected one of {known}, got {manifest.kind!r}")
    pre = manifest.preprocess
    if pre.color == "gray" and (len(pre.mean) == 3 or len(pre.std) == 3):
        raise ConfigError(f"{source}: preprocess: a gray image has 1 channel, give 1 mean/std value")
    if path is not None:
        object.__setattr__(manifest, "source", path)  # frozen; set once, right after parsing
    return manifest


def replace_manifest(manifest: AgentManifest, **changes: Any) -> AgentManifest:
    """A copy with some fields changed (e.g. ``threads`` for a benchmark), keeping its source file."""
    new = dataclasses.replace(manifest, **changes)
    object.__setattr__(new, "source", manifest.source)
    return new


def load_manifest(path: Path) -> AgentManifest:
    """Read and validate a manifest file (``.toml`` or ``.json``)."""
    path = Path(path)
    return parse_manifest(schema.read_document(path), source=str(path), path=path)
