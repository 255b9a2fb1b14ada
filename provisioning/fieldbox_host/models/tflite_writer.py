"""Write a ``.tflite`` flatbuffer from numpy arrays, without TensorFlow.

The TFLite file format is a FlatBuffer (schema ``tensorflow/lite/schema/schema.fbs``,
file identifier ``TFL3``). The ``tflite`` PyPI package carries the generated
builder functions for every table of that schema; this module drives them to
lay out one subgraph: tensors, constant buffers, operator codes and operators.

Only what our models need is supported, each op with the tensor types the
TFLite reference kernels accept:

=================  =========================================================
op                 types
=================  =========================================================
FULLY_CONNECTED    float32; int8 input/output, int8 weights (zero point 0,
                   per-tensor), int32 bias (scale = input x weight scale)
RELU               float32; int8
SOFTMAX            float32; int8 (output scale 1/256, zero point -128)
RESHAPE            any (new shape as an int32 constant input and as options)
QUANTIZE           float32 -> int8
DEQUANTIZE         int8 -> float32
=================  =========================================================

The output is a pure function of the calls made: the same graph built the same
way gives the same bytes, so model files can be pinned by sha256.

Example::

    g = GraphBuilder()
    x = g.input("features", (1, 4), DType.FLOAT32)
    w = g.constant("dense/weights", np.ones((3, 4), np.float32))
    b = g.constant("dense/bias", np.zeros(3, np.float32))
    y = g.fully_connected(x, w, b, "logits")
    data = g.serialize(outputs=[g.softmax(y, "probs")], description="demo")
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import flatbuffers  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import tflite

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
_BUFFER_ALIGNMENT = 16


class DType(enum.Enum):
    """Tensor element types we write, with their TFLite enum values."""

    FLOAT32 = 0
    INT32 = 2
    INT8 = 9

    @property
    def numpy(self) -> np.dtype[np.generic]:
        """The matching little-endian numpy dtype."""
        return np.dtype({DType.FLOAT32: "<f4", DType.INT32: "<i4", DType.INT8: "i1"}[self])

    @classmethod
    def of(cls, array: npt.NDArray[Any]) -> DType:
        """The DType of a numpy array, or ValueError for one TFLite cannot take here."""
        kinds = {np.dtype(np.float32): cls.FLOAT32, np.dtype(np.int32): cls.INT32,
                 np.dtype(np.int8): cls.INT8}
        try:
            return kinds[np.dtype(array.dtype)]
        except KeyError:
            raise ValueError(f"unsupported tensor dtype {array.dtype}") from None


class Op(enum.IntEnum):
    """Builtin operator codes (``tflite.BuiltinOperator``) this writer emits."""

    DEQUANTIZE = 6
    FULLY_CONNECTED = 9
    RELU = 19
    RESHAPE = 22
    SOFTMAX = 25
    QUANTIZE = 114


class Activation(enum.IntEnum):
    """Fused activation functions (``tflite.ActivationFunctionType``)."""

    NONE = 0
    RELU = 1


@dataclass(frozen=True)
class Quantization:
    """Affine quantization ``real = scale * (q - zero_point)``.

    One scale/zero point per tensor, or one per slice along ``axis`` (per-channel).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    def __post_init__(self) -> None:
        if not self.scale or len(self.scale) != len(self.zero_point):
            raise ValueError("quantization needs as many zero points as scales (at least one)")
        if any(not (s > 0 and np.isfinite(s)) for s in self.scale):
            raise ValueError(f"quantization scales must be finite and > 0, got {self.scale}")

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> Quantization:
        """One scale and zero point for the whole tensor."""
        return cls((float(scale),), (int(zero_point),))


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: DType
    data: bytes | None
    quant: Quantization | None


@dataclass
class _Operator:
    op: Op
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options_type: int
    options: Callable[[flatbuffers.Builder], int] | None
    version: int


@dataclass
class GraphBuilder:
    """One TFLite subgraph under construction; ``serialize`` turns it into bytes."""

    tensors: list[_Tensor] = field(default_factory=list)
    operators: list[_Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)

    # ----------------------------------------------------------------- tensors
    def _add(self, tensor: _Tensor) -> int:
        if any(t.name == tensor.name for t in self.tensors):
            raise ValueError(f"duplicate tensor name {tensor.name!r}")
        if any(d <= 0 for d in tensor.shape):
            raise ValueError(f"tensor {tensor.name!r}: dimensions must be > 0, got {tensor.shape}")
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def input(
        self, name: str, shape: Sequence[int], dtype: DType, quant: Quantization | None = None
    ) -> int:
        """A graph input tensor; returns its index."""
        index = self._add(_Tensor(name, tuple(int(d) for d in shape), dtype, None, quant))
        self.inputs.append(index)
        return index

    def constant(self, name: str, array: npt.NDArray[Any], quant: Quantization | None = None) -> int:
        """A constant tensor holding ``array`` (float32, int32 or int8); returns its index."""
        dtype = DType.of(array)
        data = np.ascontiguousarray(array, dtype=dtype.numpy).tobytes()
        return self._add(_Tensor(name, tuple(int(d) for d in array.shape), dtype, data, quant))

    def activation(
        self, name: str, shape: Sequence[int], dtype: DType, quant: Quantization | None = None
    ) -> int:
        """A tensor computed by an operator (no data); returns its index."""
        return self._add(_Tensor(name, tuple(int(d) for d in shape), dtype, None, quant))

    def shape(self, index: int) -> tuple[int, ...]:
        """The shape of tensor ``index``."""
        return self.tensors[index].shape

    def dtype(self, index: int) -> DType:
        """The element type of tensor ``index``."""
        return self.tensors[index].dtype

    def quant(self, index: int) -> Quantization | None:
        """The quantization of tensor ``index`` (None for a float tensor)."""
        return self.tensors[index].quant

    # --------------------------------------------------------------- operators
    def _op(
        self,
        op: Op,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options_type: int = 0,
        options: Callable[[flatbuffers.Builder], int] | None = None,
    ) -> None:
        for index in (*inputs, *outputs):
            if not 0 <= index < len(self.tensors):
                raise ValueError(f"{op.name}: no tensor with index {index}")
        version = _version(op, self.tensors[inputs[0]].dtype, self.tensors[outputs[0]].dtype)
        self.operators.append(
            _Operator(op, tuple(inputs), tuple(outputs), options_type, options, version)
        )

    def fully_connected(
        self,
        x: int,
        weights: int,
        bias: int,
        name: str,
        activation: Activation = Activation.NONE,
        out_quant: Quantization | None = None,
    ) -> int:
        """``y = x @ weights.T + bias``; weights are ``[units, in_features]``. Returns y."""
        units, in_features = self.shape(weights)
        batch = self.shape(x)[0]
        if self.shape(x)[-1] != in_features or self.shape(bias) != (units,):
            raise ValueError(
                f"{name}: shapes do not fit: x {self.shape(x)}, weights {self.shape(weights)}, "
                f"bias {self.shape(bias)}"
            )
        y = self.activation(name, (batch, units), self.dtype(x), out_quant)

        def options(b: flatbuffers.Builder) -> int:
            tflite.FullyConnectedOptionsStart(b)
            tflite.FullyConnectedOptionsAddFusedActivationFunction(b, int(activation))
            return int(tflite.FullyConnectedOptionsEnd(b))

        self._op(Op.FULLY_CONNECTED, (x, weights, bias), (y,), tflite.BuiltinOptions.FullyConnectedOptions,
                 options)
        return y

    def relu(self, x: int, name: str, out_quant: Quantization | None = None) -> int:
        """``max(x, 0)``; an int8 output takes ``out_quant`` (default: the input's)."""
        quant = out_quant if out_quant is not None else self.quant(x)
        y = self.activation(name, self.shape(x), self.dtype(x), quant)
        self._op(Op.RELU, (x,), (y,))
        return y

    def softmax(self, x: int, name: str, beta: float = 1.0) -> int:
        """Softmax over the last axis; int8 output uses the fixed scale 1/256, zero point -128."""
        quant = Quantization.per_tensor(1.0 / 256.0, -128) if self.dtype(x) is DType.INT8 else None
        y = self.activation(name, self.shape(x), self.dtype(x), quant)

        def options(b: flatbuffers.Builder) -> int:
            tflite.SoftmaxOptionsStart(b)
            tflite.SoftmaxOptionsAddBeta(b, float(beta))
            return int(tflite.SoftmaxOptionsEnd(b))

        self._op(Op.SOFTMAX, (x,), (y,), tflite.BuiltinOptions.SoftmaxOptions, options)
        return y

    def reshape(self, x: int, new_shape: Sequence[int], name: str) -> int:
        """Reshape ``x`` (same number of elements) to ``new_shape``."""
        new = tuple(int(d) for d in new_shape)
        if int(np.prod(new)) != int(np.prod(self.shape(x))):
            raise ValueError(f"{name}: cannot reshape {self.shape(x)} to {new}")
        shape_t = self.constant(f"{name}/shape", np.array(new, dtype=np.int32))
        y = self.activation(name, new, self.dtype(x), self.quant(x))

        def options(b: flatbuffers.Builder) -> int:
            tflite.ReshapeOptionsStartNewShapeVector(b, len(new))
            for d in reversed(new):
                b.PrependInt32(d)
            vec = b.EndVector()
            tflite.ReshapeOptionsStart(b)
            tflite.ReshapeOptionsAddNewShape(b, vec)
            return int(tflite.ReshapeOptionsEnd(b))

        self._op(Op.RESHAPE, (x, shape_t), (y,), tflite.BuiltinOptions.ReshapeOptions, options)
        return y

    def quantize(self, x: int, quant: Quantization, name: str) -> int:
        """float32 -> int8 with ``quant``."""
        if self.dtype(x) is not DType.FLOAT32:
            raise ValueError(f"{name}: QUANTIZE takes a float32 input")
        y = self.activation(name, self.shape(x), DType.INT8, quant)
        self._op(Op.QUANTIZE, (x,), (y,))
        return y

    def dequantize(self, x: int, name: str) -> int:
        """int8 -> float32 with the input's own quantization."""
        if self.dtype(x) is not DType.INT8:
            raise ValueError(f"{name}: DEQUANTIZE takes an int8 input")
        y = self.activation(name, self.shape(x), DType.FLOAT32)
        self._op(Op.DEQUANTIZE, (x,), (y,))
        return y

    # ----------------------------------------------------------- serialization
    def serialize(self, outputs: Sequence[int], description: str = "") -> bytes:
        """The ``.tflite`` file for this graph with the given output tensors."""
        if not self.inputs or not outputs:
            raise ValueError("a model needs at least one input and one output")
        b = flatbuffers.Builder(1024)

        # Buffers: index 0 is the empty sentinel every TFLite file starts with.
        buffer_of: dict[int, int] = {}
        buffer_data: list[bytes] = [b""]
        for i, t in enumerate(self.tensors):
            if t.data is not None:
                buffer_of[i] = len(buffer_data)
                buffer_data.append(t.data)
        buffer_offsets = [_buffer(b, data) for data in buffer_data]

        tensor_offsets = []
        for i, t in enumerate(self.tensors):
            name = b.CreateString(t.name)
            shape = _int32_vector(b, tflite.TensorStartShapeVector, t.shape)
            quant = _quantization(b, t.quant) if t.quant is not None else None
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, shape)
            tflite.TensorAddType(b, t.dtype.value)
            tflite.TensorAddBuffer(b, buffer_of.get(i, 0))
            tflite.TensorAddName(b, name)
            if quant is not None:
                tflite.TensorAddQuantization(b, quant)
            tensor_offsets.append(tflite.TensorEnd(b))

        codes: list[tuple[Op, int]] = []
        for o in self.operators:
            if (o.op, o.version) not in codes:
                codes.append((o.op, o.version))
        code_offsets = []
        for op, version in codes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(int(op), 127))
            tflite.OperatorCodeAddBuiltinCode(b, int(op))
            tflite.OperatorCodeAddVersion(b, version)
            code_offsets.append(tflite.OperatorCodeEnd(b))

        op_offsets = []
        for o in self.operators:
            ins = _int32_vector(b, tflite.OperatorStartInputsVector, o.inputs)
            outs = _int32_vector(b, tflite.OperatorStartOutputsVector, o.outputs)
            opts = o.options(b) if o.options is not None else None
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, codes.index((o.op, o.version)))
            tflite.OperatorAddInputs(b, ins)
            tflite.OperatorAddOutputs(b, outs)
            if opts is not None:
                tflite.OperatorAddBuiltinOptionsType(b, o.options_type)
                tflite.OperatorAddBuiltinOptions(b, opts)
            op_offsets.append(tflite.OperatorEnd(b))

        tensors_vec = _offset_vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
        inputs_vec = _int32_vector(b, tflite.SubGraphStartInputsVector, self.inputs)
        outputs_vec = _int32_vector(b, tflite.SubGraphStartOutputsVector, outputs)
        ops_vec = _offset_vector(b, tflite.SubGraphStartOperatorsVector, op_offsets)
        sg_name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors_vec)
        tflite.SubGraphAddInputs(b, inputs_vec)
        tflite.SubGraphAddOutputs(b, outputs_vec)
        tflite.SubGraphAddOperators(b, ops_vec)
        tflite.SubGraphAddName(b, sg_name)
        subgraph = tflite.SubGraphEnd(b)

        signature = self._signature(b, outputs)

        codes_vec = _offset_vector(b, tflite.ModelStartOperatorCodesVector, code_offsets)
        subgraphs_vec = _offset_vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
        buffers_vec = _offset_vector(b, tflite.ModelStartBuffersVector, buffer_offsets)
        sigs_vec = _offset_vector(b, tflite.ModelStartSignatureDefsVector, [signature])
        desc = b.CreateString(description)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, codes_vec)
        tflite.ModelAddSubgraphs(b, subgraphs_vec)
        tflite.ModelAddDescription(b, desc)
        tflite.ModelAddBuffers(b, buffers_vec)
        tflite.ModelAddSignatureDefs(b, sigs_vec)
        model = tflite.ModelEnd(b)
        b.Finish(model, file_identifier=FILE_IDENTIFIER)
        return bytes(b.Output())

    def _signature(self, b: flatbuffers.Builder, outputs: Sequence[int]) -> int:
        """A ``serving_default`` signature naming the inputs and outputs by tensor name."""

        def maps(indices: Sequence[int]) -> list[int]:
            offsets = []
            for index in indices:
                name = b.CreateString(self.tensors[index].name)
                tflite.TensorMapStart(b)
                tflite.TensorMapAddName(b, name)
                tflite.TensorMapAddTensorIndex(b, index)
                offsets.append(tflite.TensorMapEnd(b))
            return offsets

        ins = _offset_vector(b, tflite.SignatureDefStartInputsVector, maps(self.inputs))
        outs = _offset_vector(b, tflite.SignatureDefStartOutputsVector, maps(outputs))
        key = b.CreateString("serving_default")
        tflite.SignatureDefStart(b)
        tflite.SignatureDefAddInputs(b, ins)
        tflite.SignatureDefAddOutputs(b, outs)
        tflite.SignatureDefAddSignatureKey(b, key)
        tflite.SignatureDefAddSubgraphIndex(b, 0)
        return int(tflite.SignatureDefEnd(b))


def _version(op: Op, in_type: DType, out_type: DType) -> int:
    """The operator version TFLite's converter would record for these types."""
    int8 = DType.INT8 in (in_type, out_type)
    if op is Op.FULLY_CONNECTED:
        return 4 if int8 else 1
    if op in (Op.RELU, Op.SOFTMAX, Op.DEQUANTIZE):
        return 2 if int8 else 1
    return 1


def _buffer(b: flatbuffers.Builder, data: bytes) -> int:
    if not data:
        tflite.BufferStart(b)
        return int(tflite.BufferEnd(b))
    b.StartVector(1, len(data), _BUFFER_ALIGNMENT)
    b.head = b.Head() - len(data)
    b.Bytes[b.Head() : b.Head() + len(data)] = data
    vec = b.EndVector()
    tflite.BufferStart(b)
    tflite.BufferAddData(b, vec)
    return int(tflite.BufferEnd(b))


def _int32_vector(
    b: flatbuffers.Builder, start: Callable[[flatbuffers.Builder, int], None], values: Sequence[int]
) -> int:
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(int(v))
    return int(b.EndVector())


def _offset_vector(
    b: flatbuffers.Builder, start: Callable[[flatbuffers.Builder, int], None], offsets: Sequence[int]
) -> int:
    start(b, len(offsets))
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _quantization(b: flatbuffers.Builder, q: Quantization) -> int:
    tflite.QuantizationParametersStartScaleVector(b, len(q.scale))
    for s in reversed(q.scale):
        b.PrependFloat32(float(s))
    scale = b.EndVector()
    tflite.QuantizationParametersStartZeroPointVector(b, len(q.zero_point))
    for z in reversed(q.zero_point):
        b.PrependInt64(int(z))
    zero = b.EndVector()
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero)
    tflite.QuantizationParametersAddQuantizedDimension(b, q.axis)
    return int(tflite.QuantizationParametersEnd(b))
