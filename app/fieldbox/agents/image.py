"""Image inputs: decode bytes with Pillow, resize to the model's size, make the tensor.

Decoding is strict: Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off, so a
truncated JPEG or PNG is an :class:`~fieldbox.errors.InputError` with a one-line
reason instead of a half-grey picture that silently gives a wrong answer.

Resizing keeps a :class:`Placement` that says where the original image landed in
the model's input, so postprocessing can map normalised model coordinates back
to pixels of the original image (letterbox padding, centre crop or stretch).
"""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fieldbox.agents.interpreter import Array, TensorDetail
from fieldbox.agents.manifest import ImagePreprocess
from fieldbox.errors import ConfigError, InputError, ModelError

_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class Placement:
    """Where the original image sits in the model's input canvas.

    The original (``width`` x ``height``) was resized to ``scaled_width`` x
    ``scaled_height`` and its top-left corner put at (``offset_x``, ``offset_y``)
    of the ``canvas_width`` x ``canvas_height`` input (negative offsets: cropped).
    """

    width: int
    height: int
    canvas_width: int
    canvas_height: int
    scaled_width: float
    scaled_height: float
    offset_x: float
    offset_y: float

    def to_original(self, x: Array, y: Array) -> tuple[Array, Array]:
        """Map normalised model coordinates (0..1 of the canvas) to original pixels."""
        ox = (x * self.canvas_width - self.offset_x) * (self.width / self.scaled_width)
        oy = (y * self.canvas_height - self.offset_y) * (self.height / self.scaled_height)
        return ox, oy


@dataclass(frozen=True)
class ImageGeometry:
    """The model input's image dimensions and where they sit in the tensor shape."""

    height: int
    width: int
    channels: int
    layout: str

    @classmethod
    def of(cls, detail: TensorDetail, layout: str) -> ImageGeometry:
        """Read H, W, C from a [1, H, W, C] (NHWC) or [1, C, H, W] (NCHW) input."""
        shape = detail.shape
        if len(shape) != 4 or shape[0] != 1:
            raise ModelError(
                f"input {detail.name!r} has shape {list(shape)}; an image model needs [1, H, W, C] "
                "or [1, C, H, W]"
            )
        h, w, c = (shape[1], shape[2], shape[3]) if layout == "NHWC" else (shape[2], shape[3], shape[1])
        if c not in (1, 3):
            raise ConfigError(
                f"input {detail.name!r} has {c} channels in layout {layout} (shape {list(shape)}); "
                "expected 1 or 3",
                "check preprocess.layout",
            )
        return cls(height=h, width=w, channels=c, layout=layout)


_pixel_cap: int | None = None

DRAFT_ABOVE = 2_000_000
"""A JPEG larger than this many pixels is decoded at a reduced scale where the model allows it; a
smaller one is decoded whole, so ordinary inputs give exactly the answer a full decode gives."""


def set_pixel_cap(pixels: int | None) -> None:
    """The process-wide cap on decoded pixels (the runner sets it from :mod:`fieldbox.limits`)."""
    global _pixel_cap
    _pixel_cap = pixels


def decode_image(
    data: bytes, max_pixels: int = 64_000_000, at_least: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an encoded image fully; InputError (one line) if it is empty, truncated or not an image.

    ``at_least``: the size the caller needs. A JPEG over :data:`DRAFT_ABOVE`
    pixels is then decoded at the smallest of 1/1, 1/2, 1/4, 1/8 that still covers it (libjpeg's DCT
    scaling), so a 12-megapixel photo for a 128-pixel model costs a fraction
    of the memory. The pixel limit (the lower of ``max_pixels`` and the
    runner's cap) applies to what is decoded.
    """
    if not data:
        raise InputError("empty input (0 bytes)")
    limit = max_pixels if _pixel_cap is None else min(max_pixels, _pixel_cap)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            source = image.size
            if at_least is not None and image.format == "JPEG" and source[0] * source[1] > DRAFT_ABOVE:
                image.draft(image.mode, at_least)  # scale only; the mode stays
            width, height = image.size
            if width * height > limit:
                raise InputError(
                    f"image is {width}x{height} pixels, more than the {limit} allowed",
                    "raise preprocess.max_pixels (or limits.toml max_decoded_pixels) if this is intended",
                )
            image.load()
            scale = source[0] / image.size[0]  # > 1 where the JPEG was decoded at a reduced scale
            image = ImageOps.exif_transpose(image) or image
            image.info["decode_scale"] = scale
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"not an image Pillow can read ({len(data)} bytes, starts {data[:8]!r})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"corrupt image: {reason}") from None
    return image


def fit(image: Image.Image, geometry: ImageGeometry, pre: ImagePreprocess) -> tuple[Image.Image, Placement]:
    """Resize ``image`` into the model's input size as ``pre.resize`` says; also return the placement."""
    w, h = image.size
    cw, ch = geometry.width, geometry.height
    resample = _FILTERS[pre.filter]
    if pre.resize == "stretch":
        return image.resize((cw, ch), resample), Placement(w, h, cw, ch, cw, ch, 0.0, 0.0)
    scale = min(cw / w, ch / h) if pre.resize == "letterbox" else max(cw / w, ch / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = image.resize((sw, sh), resample)
    ox, oy = (cw - sw) // 2, (ch - sh) // 2
    fill: Any = pre.pad_value if image.mode == "L" else (pre.pad_value,) * 3
    canvas = Image.new(image.mode, (cw, ch), fill)
    canvas.paste(scaled, (ox, oy))  # a negative offset crops (center-crop)
    return canvas, Placement(w, h, cw, ch, float(sw), float(sh), float(ox), float(oy))


def to_tensor(
    image: Image.Image, detail: TensorDetail, geometry: ImageGeometry, pre: ImagePreprocess
) -> Array:
    """Turn a fitted RGB/L image into the input tensor: colour order, mean/std, layout, dtype.

    For a quantized integer input the normalised value is quantized with the
    model's own scale and zero point; for a float input it is used as is.
    """
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pre.color == "bgr":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    real = (pixels - mean) / std
    if geometry.layout == "NCHW":
        real = real.transpose(2, 0, 1)
    real = real[None, ...]
    return quantize(real, detail)


def quantize(real: Array, detail: TensorDetail) -> Array:
    """Convert real values to the tensor's dtype, quantizing with its scale/zero point when it has them."""
    dtype = detail.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = real / detail.scale + detail.zero_point if detail.quantized else real
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(real, dtype=dtype)


def dequantize(values: Array, detail: TensorDetail) -> Array:
    """Real values of an output tensor: ``(q - zero_point) * scale`` for quantized tensors."""
    if detail.quantized:
        return (values.astype(np.float32) - detail.zero_point) * detail.scale
    return values.astype(np.float32)


_WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""Modes whose samples are wider than 8 bits; Pillow's ``convert`` clips these instead of scaling."""


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` as 8-bit ``mode`` ("RGB" or "L"), so any copy of a photo gives the model the same pixels.

    Pillow converts palette, bilevel, grey, alpha and CMYK images faithfully;
    it clips wide samples instead of scaling them, so a 16-bit scan would
    arrive white. Those are scaled here: 16-bit integers by 1/257 (65535 ->
    255); 32-bit integers the same when any value exceeds 255 (else they are
    8-bit values already); floats from [0, 1] when none exceeds 1, else as
    8-bit values, else as 16-bit ones. Transparency is dropped, as an RGB
    copy of the photo would have it.
    """
    if image.mode in _WIDE:
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            values = values * 255.0
        elif image.mode.startswith("I;16") or peak > 255.0:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.mode != mode:
        image = image.convert(mode)
    return image


def prepare_image(
    data: bytes, detail: TensorDetail, geometry: ImageGeometry, pre: ImagePreprocess
) -> tuple[Array, Placement]:
    """Bytes of an encoded image -> (input tensor, placement)."""
    image = decode_image(data, pre.max_pixels, at_least=(2 * geometry.width, 2 * geometry.height))
    mode = "L" if geometry.channels == 1 or pre.color == "gray" else "RGB"
    if geometry.channels == 3 and pre.color == "gray":
        raise ConfigError("preprocess.color is 'gray' but the model input has 3 channels")
    scale = float(image.info.get("decode_scale", 1.0))  # before to_mode: a new image has no info
    image = to_mode(image, mode)
    fitted, placement = fit(image, geometry, pre)
    if scale != 1.0:  # answers are in the pixels of the photo as it is, not of its scaled decode
        placement = dataclasses.replace(
            placement, width=round(placement.width * scale), height=round(placement.height * scale)
        )
    return to_tensor(fitted, detail, geometry, pre), placement


def encode_png(array: Array) -> bytes:
    """PNG bytes of a uint8 HxW or HxWxC array (for synthetic self-test images)."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()
