"""Export a trained :class:`~fieldbox_host.models.mlp.MLP` to ``.tflite``: float32 and int8.

float32: ``input [-> RESHAPE] -> (FULLY_CONNECTED -> RELU)* -> FULLY_CONNECTED -> SOFTMAX``
(RELU as its own op).

int8 is post-training quantization the way the TFLite converter does it:

* activations (the input and each FULLY_CONNECTED output) are asymmetric int8
  over the range seen on a calibration set (always including 0);
* a hidden layer's RELU is fused into its FULLY_CONNECTED, as the converter
  does, so its output range starts at 0 and uses all 256 levels (a separate
  int8 RELU op would requantize and lose a bit to rounding);
* weights are symmetric int8 per tensor (zero point 0, scale ``max|w| / 127``);
* biases are int32 with scale ``input scale x weight scale``;
* SOFTMAX's int8 output has TFLite's fixed scale 1/256 and zero point -128.

The int8 model's inputs and outputs are either int8 themselves (``io="int8"``:
the caller quantizes with the model's input parameters, as
:mod:`fieldbox.agents.text` does) or float32 with a QUANTIZE at the input and a
DEQUANTIZE at the output (``io="float32"``: a drop-in for the float model).

:func:`int8_reference` runs the same integer arithmetic in numpy, so tests can
check the runtime's results against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from fieldbox_host.models.mlp import F64, MLP
from fieldbox_host.models.tflite_writer import Activation, DType, GraphBuilder, Quantization

RANGE_GRID = 1.0 / 64.0
"""Calibrated ranges are widened to multiples of this, so the chosen scales are stable."""


def _f32(x: float) -> float:
    """``x`` rounded to float32, as the file stores it."""
    return float(np.float32(x))


def activation_quant(lo: float, hi: float) -> Quantization:
    """Asymmetric int8 parameters covering ``[lo, hi]`` (widened to include 0)."""
    lo = math.floor(min(0.0, lo) / RANGE_GRID) * RANGE_GRID
    hi = math.ceil(max(0.0, hi) / RANGE_GRID) * RANGE_GRID
    if hi - lo <= 0.0:
        hi = lo + RANGE_GRID
    scale = _f32((hi - lo) / 255.0)
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quantization.per_tensor(scale, zero_point)


@dataclass(frozen=True)
class Int8Layer:
    """One quantized FULLY_CONNECTED, with a fused RELU when ``relu`` (hidden layers)."""

    weights: npt.NDArray[np.int8]
    weight_scale: float
    bias: npt.NDArray[np.int32]
    out: Quantization
    relu: bool


@dataclass(frozen=True)
class Int8Plan:
    """All quantization parameters of an int8 export."""

    input: Quantization
    layers: tuple[Int8Layer, ...]


SOFTMAX_QUANT = Quantization.per_tensor(1.0 / 256.0, -128)


def plan_int8(mlp: MLP, calibration: npt.ArrayLike) -> Int8Plan:
    """Choose int8 parameters from the float model's activations on ``calibration`` rows."""
    x = np.asarray(calibration, dtype=np.float64).reshape(np.shape(calibration)[0], -1)
    in_q = activation_quant(float(x.min()), float(x.max()))
    pre = mlp.pre_activations(x)
    layers = []
    prev = in_q
    for i, (dense, z) in enumerate(zip(mlp.layers, pre, strict=True)):
        w_scale = _f32(max(float(np.abs(dense.weights).max()), 1e-8) / 127.0)
        wq = np.clip(np.round(dense.weights / w_scale), -127, 127).astype(np.int8)
        b_scale = prev.scale[0] * w_scale
        bq = np.round(dense.bias / b_scale).astype(np.int64)
        bq = np.clip(bq, -(2**31), 2**31 - 1).astype(np.int32)
        relu = i < len(mlp.layers) - 1
        out_q = activation_quant(0.0 if relu else float(z.min()), float(z.max()))
        layers.append(Int8Layer(wq, w_scale, bq, out_q, relu))
        prev = out_q
    return Int8Plan(in_q, tuple(layers))


def _quantize(real: F64, q: Quantization) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = np.clip(
        np.round(real / q.scale[0]) + q.zero_point[0], -128, 127
    ).astype(np.int64)
    return out


def _dequantize(values: npt.NDArray[np.int64], q: Quantization) -> F64:
    out: F64 = (values.astype(np.float64) - q.zero_point[0]) * q.scale[0]
    return out


def int8_reference(plan: Int8Plan, x: npt.ArrayLike) -> F64:
    """Probabilities the int8 model should produce for float rows ``x`` (numpy, exact-ish).

    Integer accumulation is exact; requantization and softmax use float math
    where TFLite uses fixed-point, so results may differ by a step of 1/256.
    """
    rows = np.asarray(x, dtype=np.float64).reshape(np.shape(x)[0], -1)
    q = _quantize(rows, plan.input)
    q_params = plan.input
    for layer in plan.layers:
        acc = (q - q_params.zero_point[0]) @ layer.weights.astype(np.int64).T + layer.bias
        real = acc * (q_params.scale[0] * layer.weight_scale)
        q = _quantize(np.maximum(real, 0.0) if layer.relu else real, layer.out)
        q_params = layer.out
    logits = _dequantize(q, q_params)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    return _dequantize(_quantize(probs, SOFTMAX_QUANT), SOFTMAX_QUANT)


def _input(g: GraphBuilder, name: str, shape: Sequence[int], dtype: DType,
           quant: Quantization | None) -> tuple[int, int]:
    """The graph input and the tensor the first layer reads (flattened to ``[1, n]``)."""
    x = g.input(name, shape, dtype, quant)
    if len(shape) == 2:
        return x, x
    flat = g.reshape(x, (shape[0], int(np.prod(shape[1:]))), f"{name}/flat")
    return x, flat


def export_float32(mlp: MLP, input_shape: Sequence[int], description: str) -> bytes:
    """The float32 ``.tflite`` of ``mlp`` with input ``input_shape`` (batch 1)."""
    g = GraphBuilder()
    _, h = _input(g, "input", input_shape, DType.FLOAT32, None)
    for i, dense in enumerate(mlp.layers, start=1):
        w = g.constant(f"dense_{i}/weights", dense.weights.astype(np.float32))
        b = g.constant(f"dense_{i}/bias", dense.bias.astype(np.float32))
        h = g.fully_connected(h, w, b, f"dense_{i}")
        if i < len(mlp.layers):
            h = g.relu(h, f"dense_{i}/relu")
    scores = g.softmax(h, "scores")
    return g.serialize([scores], description)


def export_int8(
    plan: Int8Plan,
    input_shape: Sequence[int],
    description: str,
    io: Literal["int8", "float32"] = "int8",
) -> bytes:
    """The int8 ``.tflite`` for ``plan``; ``io`` says whether inputs/outputs are int8 or float32."""
    g = GraphBuilder()
    if io == "int8":
        _, h = _input(g, "input", input_shape, DType.INT8, plan.input)
    else:
        _, flat = _input(g, "input", input_shape, DType.FLOAT32, None)
        h = g.quantize(flat, plan.input, "input/quantized")
    for i, layer in enumerate(plan.layers, start=1):
        in_scale = g.quant(h)
        assert in_scale is not None
        w = g.constant(f"dense_{i}/weights", layer.weights,
                       Quantization.per_tensor(layer.weight_scale, 0))
        b = g.constant(f"dense_{i}/bias", layer.bias,
                       Quantization.per_tensor(_f32(in_scale.scale[0] * layer.weight_scale), 0))
        activation = Activation.RELU if layer.relu else Activation.NONE
        h = g.fully_connected(h, w, b, f"dense_{i}", activation=activation, out_quant=layer.out)
    scores = g.softmax(h, "scores" if io == "int8" else "scores/quantized")
    if io == "float32":
        scores = g.dequantize(scores, "scores")
    return g.serialize([scores], description)
