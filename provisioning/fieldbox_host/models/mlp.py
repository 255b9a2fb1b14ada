"""A small multi-layer perceptron, trained with numpy, and its numpy forward passes.

``features -> FULLY_CONNECTED -> RELU -> ... -> FULLY_CONNECTED -> SOFTMAX``,
trained with softmax cross-entropy and Adam on mini-batches. Everything is
seeded, and the arithmetic runs in float64 with the final weights snapped to a
grid of 2**-16 (exactly representable in float32): two runs on the same data
give bit-identical weights, so exported ``.tflite`` files have a fixed sha256
that manifests can pin. (The snap also absorbs last-bit differences between
BLAS builds on other CPUs.)

The numpy forward pass here is the reference the exported models are tested
against: :meth:`MLP.probs` for the float32 model, :func:`int8_probs` (which
mimics TFLite's integer kernels with the same quantization parameters) for the
int8 one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
GRID = 2.0**-16
"""Trained weights are rounded to multiples of this (float32-exact, BLAS-noise-proof)."""


@dataclass(frozen=True)
class Dense:
    """One fully connected layer, TFLite layout: ``weights`` is ``[units, in_features]``."""

    weights: F64
    bias: F64


@dataclass(frozen=True)
class MLP:
    """Dense layers with ReLU between them and softmax after the last."""

    layers: tuple[Dense, ...]

    def pre_activations(self, x: npt.ArrayLike) -> list[F64]:
        """The output of every FULLY_CONNECTED (before its ReLU), for calibration."""
        h = np.asarray(x, dtype=np.float64)
        outs = []
        for i, layer in enumerate(self.layers):
            z = h @ layer.weights.T + layer.bias
            outs.append(z)
            h = np.maximum(z, 0.0) if i < len(self.layers) - 1 else z
        return outs

    def logits(self, x: npt.ArrayLike) -> F64:
        """Pre-softmax scores ``[n, classes]``."""
        return self.pre_activations(x)[-1]

    def probs(self, x: npt.ArrayLike) -> F64:
        """Class probabilities ``[n, classes]``."""
        return softmax(self.logits(x))

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The most probable class of each row."""
        out: npt.NDArray[np.int64] = np.argmax(self.logits(x), axis=1)
        return out


def softmax(z: F64) -> F64:
    """Row-wise softmax, numerically stable."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: F64 = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`."""

    hidden: tuple[int, ...] = (32,)
    epochs: int = 60
    batch: int = 32
    lr: float = 0.01
    weight_decay: float = 1e-4
    seed: int = 0


def _snap(a: F64) -> F64:
    out: F64 = np.round(a / GRID) * GRID
    return out


def train(x: npt.ArrayLike, y: npt.ArrayLike, classes: int, config: TrainConfig) -> MLP:
    """Train an MLP on ``x`` ``[n, features]`` and integer labels ``y`` ``[n]``.

    Softmax cross-entropy with L2 weight decay, Adam (beta 0.9/0.999), He
    initialisation, shuffled mini-batches, all from ``config.seed``.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.int64)
    if xs.ndim != 2 or ys.shape != (xs.shape[0],) or xs.shape[0] == 0:
        raise ValueError(f"train: need x [n, features] and y [n], got {xs.shape} and {ys.shape}")
    rng = np.random.default_rng(config.seed)
    sizes = [xs.shape[1], *config.hidden, classes]
    params: list[F64] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        params.append(rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in))
        params.append(np.zeros(fan_out))
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.eye(classes)[ys]
    step = 0
    b1, b2, eps = 0.9, 0.999, 1e-8
    n_layers = len(sizes) - 1
    for _ in range(config.epochs):
        order = rng.permutation(xs.shape[0])
        for start in range(0, len(order), config.batch):
            idx = order[start : start + config.batch]
            xb, tb = xs[idx], onehot[idx]
            # forward
            acts = [xb]
            zs = []
            for li in range(n_layers):
                z = acts[-1] @ params[2 * li].T + params[2 * li + 1]
                zs.append(z)
                acts.append(np.maximum(z, 0.0) if li < n_layers - 1 else z)
            grad = (softmax(acts[-1]) - tb) / len(idx)
            # backward
            grads: list[F64] = [np.zeros(0)] * len(params)
            for li in reversed(range(n_layers)):
                grads[2 * li] = grad.T @ acts[li] + config.weight_decay * params[2 * li]
                grads[2 * li + 1] = grad.sum(axis=0)
                if li > 0:
                    grad = (grad @ params[2 * li]) * (zs[li - 1] > 0)
            step += 1
            for i, g in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                m_hat = m[i] / (1 - b1**step)
                v_hat = v[i] / (1 - b2**step)
                params[i] = params[i] - config.lr * m_hat / (np.sqrt(v_hat) + eps)
    layers = tuple(
        Dense(_snap(params[2 * li]), _snap(params[2 * li + 1])) for li in range(n_layers)
    )
    return MLP(layers)


def accuracy(pred: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Fraction of equal entries."""
    p, t = np.asarray(pred), np.asarray(truth)
    return float(np.mean(p == t)) if t.size else 0.0
