"""The TFLite writer: files it makes load and run in the real tflite_runtime, with numpy's answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tflite

from fieldbox.agents.interpreter import open_model_bytes
from fieldbox_host.models.build import run_model
from fieldbox_host.models.export import (
    activation_quant,
    export_float32,
    export_int8,
    int8_reference,
    plan_int8,
)
from fieldbox_host.models.mlp import MLP, Dense, TrainConfig, softmax, train
from fieldbox_host.models.tflite_writer import Activation, DType, GraphBuilder, Op, Quantization


def _random_mlp(seed: int, sizes: tuple[int, ...]) -> MLP:
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        w = np.round(rng.normal(size=(fan_out, fan_in)) / np.sqrt(fan_in) * 2**16) / 2**16
        b = np.round(rng.normal(size=fan_out) * 0.1 * 2**16) / 2**16
        layers.append(Dense(w, b))
    return MLP(tuple(layers))


def test_float32_mlp_matches_numpy():
    mlp = _random_mlp(1, (12, 16, 8, 4))
    x = np.random.default_rng(2).normal(size=(50, 12)).astype(np.float32)
    got = run_model(export_float32(mlp, (1, 12), "test"), x)
    np.testing.assert_allclose(got, mlp.probs(x), atol=2e-6)
    assert np.array_equal(got.argmax(1), mlp.predict(x))


def test_float32_image_input_reshapes_like_numpy():
    mlp = _random_mlp(3, (16, 8, 3))
    x = np.random.default_rng(4).random((20, 4, 4, 1)).astype(np.float32)
    got = run_model(export_float32(mlp, (1, 4, 4, 1), "test"), x)
    np.testing.assert_allclose(got, mlp.probs(x.reshape(20, 16)), atol=2e-6)


@pytest.mark.parametrize("io", ["int8", "float32"])
def test_int8_mlp_matches_integer_reference(io):
    rng = np.random.default_rng(5)
    x = rng.random((300, 20))
    y = x[:, :4].argmax(1)
    mlp = train(x, y, 4, TrainConfig(hidden=(16,), epochs=40, seed=1))
    plan = plan_int8(mlp, x)
    model = export_int8(plan, (1, 20), "test", io=io)
    interp = open_model_bytes(model)
    expected = np.int8 if io == "int8" else np.float32
    assert interp.input_details()[0].dtype == expected
    assert interp.output_details()[0].dtype == expected
    got = run_model(model, x.astype(np.float32))
    ref = int8_reference(plan, x)
    # Same integer arithmetic; TFLite's fixed-point requantization may round a value one step apart.
    assert np.abs(got - ref).max() <= 2 / 256
    assert np.mean(got == ref) >= 0.99
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.mean(got.argmax(1) == mlp.predict(x)) >= 0.97


def test_int8_tensors_carry_the_planned_quantization():
    mlp = _random_mlp(6, (10, 6, 3))
    x = np.random.default_rng(7).random((40, 10))
    plan = plan_int8(mlp, x)
    interp = open_model_bytes(export_int8(plan, (1, 10), "test", io="int8"))
    inp, out = interp.input_details()[0], interp.output_details()[0]
    assert (inp.scale, inp.zero_point) == (plan.input.scale[0], plan.input.zero_point[0])
    assert (out.scale, out.zero_point) == (1 / 256, -128)


def test_file_structure_is_what_tflite_expects():
    data = export_float32(_random_mlp(8, (6, 4, 2)), (1, 6), "described")
    assert data[4:8] == b"TFL3"
    model = tflite.Model.GetRootAs(data, 0)
    assert model.Version() == 3
    assert model.Description() == b"described"
    assert model.Buffers(0).DataLength() == 0  # the empty sentinel buffer
    ops = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    assert ops == [Op.FULLY_CONNECTED, Op.RELU, Op.SOFTMAX]
    sub = model.Subgraphs(0)
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        if t.Buffer():
            buf = model.Buffers(t.Buffer())
            offset = buf._tab.Vector(buf._tab.Offset(4))
            assert offset % 16 == 0, f"tensor {t.Name()!r} data not 16-byte aligned"
    assert model.SignatureDefs(0).SignatureKey() == b"serving_default"


def test_same_graph_same_bytes():
    mlp = _random_mlp(9, (8, 5, 3))
    assert export_float32(mlp, (1, 8), "x") == export_float32(mlp, (1, 8), "x")
    plan = plan_int8(mlp, np.random.default_rng(0).random((10, 8)))
    assert export_int8(plan, (1, 8), "x") == export_int8(plan, (1, 8), "x")


def test_fused_relu_and_explicit_ops():
    g = GraphBuilder()
    x = g.input("x", (1, 3), DType.FLOAT32)
    w = g.constant("w", np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 1.0]], np.float32))
    b = g.constant("b", np.array([0.5, -0.25], np.float32))
    h = g.fully_connected(x, w, b, "h", activation=Activation.RELU)
    q = g.quantize(h, Quantization.per_tensor(0.05, -128), "hq")
    y = g.dequantize(q, "y")
    interp = open_model_bytes(g.serialize([y], "ops"))
    inp = np.array([[1.0, 2.0, 3.0]], np.float32)
    interp.set_tensor(interp.input_details()[0].index, inp)
    interp.invoke()
    got = interp.get_tensor(interp.output_details()[0].index)
    expected = np.maximum(inp @ np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 1.0]]).T + [0.5, -0.25], 0)
    np.testing.assert_allclose(got, np.round(expected / 0.05) * 0.05, atol=1e-6)


def test_int8_relu_op_clamps_at_the_zero_point():
    g = GraphBuilder()
    quant = Quantization.per_tensor(0.1, -20)
    x = g.input("x", (1, 5), DType.INT8, quant)
    y = g.relu(x, "y")
    interp = open_model_bytes(g.serialize([y], "relu"))
    values = np.array([[-128, -21, -20, -19, 127]], np.int8)
    interp.set_tensor(interp.input_details()[0].index, values)
    interp.invoke()
    got = interp.get_tensor(interp.output_details()[0].index)
    assert got.tolist() == [[-20, -20, -20, -19, 127]]


def test_softmax_matches_numpy_softmax():
    z = np.array([[2.0, -1.0, 0.5]])
    assert np.allclose(softmax(z).sum(), 1.0)
    assert softmax(z).argmax() == 0


@pytest.mark.parametrize(
    "build",
    [
        lambda g: g.reshape(g.input("x", (1, 6), DType.FLOAT32), (1, 4), "bad"),
        lambda g: g.fully_connected(
            g.input("x", (1, 3), DType.FLOAT32),
            g.constant("w", np.zeros((2, 4), np.float32)),
            g.constant("b", np.zeros(2, np.float32)),
            "y",
        ),
        lambda g: (g.input("x", (1, 3), DType.FLOAT32), g.input("x", (1, 3), DType.FLOAT32)),
        lambda g: g.input("x", (1, 0), DType.FLOAT32),
        lambda g: g.dequantize(g.input("x", (1, 3), DType.FLOAT32), "y"),
        lambda g: g.constant("c", np.zeros(3, np.float64)),
    ],
)
def test_invalid_graphs_are_refused(build):
    with pytest.raises(ValueError):
        build(GraphBuilder())


def test_quantization_is_validated():
    with pytest.raises(ValueError):
        Quantization((0.0,), (0,))
    with pytest.raises(ValueError):
        Quantization((0.1, 0.2), (0,))


def test_activation_quant_covers_zero_and_range():
    q = activation_quant(0.2, 3.0)  # widened to include 0
    assert q.zero_point[0] == -128
    assert abs(q.scale[0] * 255 - 3.0) < 1e-6
    q = activation_quant(-1.0, 1.0)
    real_zero = (0 - q.zero_point[0]) * q.scale[0]
    assert abs(real_zero) <= q.scale[0]
