"""Floating-point operations per image, counted analytically from a built model's layers.

Inference (forward pass) counts, one multiply-add = 2 FLOPs:

- Conv2D: 2 * k_h * k_w * in_channels / groups per output value, + 1 for the bias;
  DepthwiseConv2D: 2 * k_h * k_w per output value (+ bias)
- LocallyConnected2D: 2 * k * k * in_channels per output value (+ bias)
- Dense: 2 * inputs per output value (+ bias), over any leading axes
- a layer's own activation (other than linear), ReLU and Activation layers: 1 per output value
- BatchNormalization: 2 per value (scale and shift, the inference form)
- pooling: pool_h * pool_w per output value; global pooling: 1 per input value
- Maxout: ``pieces`` per output value; SubtractiveNormalization: k * k + 2 per value
- Rescaling: 2 per value; Standardize: 6 per value (mean, variance, subtract, divide)
- Crop: the two one-hot selection matmuls it is implemented with (2 * size * H * W * C and
  2 * size * size * W * C); the random augmentations are identities at inference: 0
- Add: 1 per output value for each input after the first (residual sums)
- AffineSampler: 12 per output pixel (its two source coordinates, scaled) and 9 per output value (three
  linear interpolations of the four pixels read)
- Dropout, Flatten, Reshape, inputs: 0; nested models are walked.

A layer type without a rule is an error naming it (add a rule to ``RULES``), so a new layer never
silently counts as free. A training step costs about 3x the forward pass (forward, and backward
through activations and weights).
"""

from __future__ import annotations

import math
from typing import Callable

from harness.backend import load_keras
from harness.models import layers as harness_layers

keras = load_keras()
L = keras.layers

Shape = tuple


def _size(shape: Shape) -> int:
    """Values per image: the product of every axis but the batch axis."""
    return math.prod(int(d) for d in shape[1:])


def _activation(layer, out: Shape) -> int:
    act = getattr(layer, "activation", None)
    return 0 if act is None or act is keras.activations.linear else _size(out)


def _bias(layer, out: Shape) -> int:
    return _size(out) if getattr(layer, "use_bias", False) else 0


def _conv(layer, inp: Shape, out: Shape) -> int:
    kh, kw = layer.kernel_size
    per_output = 2 * kh * kw * int(inp[-1]) // getattr(layer, "groups", 1)
    return _size(out) * per_output + _bias(layer, out) + _activation(layer, out)


def _depthwise(layer, inp: Shape, out: Shape) -> int:
    kh, kw = layer.kernel_size
    return _size(out) * 2 * kh * kw + _bias(layer, out) + _activation(layer, out)


def _locally_connected(layer, inp: Shape, out: Shape) -> int:
    per_output = 2 * layer.kernel_size ** 2 * int(inp[-1])
    return _size(out) * per_output + _bias(layer, out) + _activation(layer, out)


def _dense(layer, inp: Shape, out: Shape) -> int:
    return _size(out) * 2 * int(inp[-1]) + _bias(layer, out) + _activation(layer, out)


def _pool(layer, inp: Shape, out: Shape) -> int:
    return _size(out) * math.prod(layer.pool_size)


def _crop(layer, inp: Shape, out: Shape) -> int:
    height, width, channels = (int(d) for d in inp[1:])
    return 2 * layer.size * height * width * channels + 2 * layer.size * layer.size * width * channels


def _per_value(n: int) -> Callable:
    return lambda layer, inp, out: n * _size(out)


def _per_input_value(layer, inp: Shape, out: Shape) -> int:
    return _size(inp)


def _free(layer, inp: Shape, out: Shape) -> int:
    return 0


# Checked in order with isinstance: subclasses before their bases (DepthwiseConv2D is not a Conv2D in
# Keras 3, but order keeps that safe if it ever becomes one).
RULES: list[tuple[type, Callable]] = [
    (L.DepthwiseConv2D, _depthwise),
    (L.Conv2D, _conv),
    (harness_layers.LocallyConnected2D, _locally_connected),
    (L.Dense, _dense),
    (L.BatchNormalization, _per_value(2)),
    (L.ReLU, _per_value(1)),
    (L.Activation, _per_value(1)),
    (L.MaxPooling2D, _pool),
    (L.AveragePooling2D, _pool),
    (L.GlobalAveragePooling2D, _per_input_value),
    (L.GlobalMaxPooling2D, _per_input_value),
    (harness_layers.Maxout, lambda layer, inp, out: layer.pieces * _size(out)),
    (harness_layers.SubtractiveNormalization, lambda layer, inp, out: (layer.size ** 2 + 2) * _size(out)),
    (L.Add, lambda layer, inp, out: (len(layer.input) - 1) * _size(out)),
    (L.Rescaling, _per_value(2)),
    (harness_layers.Standardize, _per_value(6)),
    (harness_layers.Crop, _crop),
    (harness_layers.ColorJitter, _free),
    (harness_layers.PCAColour, _free),
    (harness_layers.Rotate, _free),
    (harness_layers.AffineSampler, lambda layer, inp, out: 12 * _size(out[:-1]) + 9 * _size(out)),
    (L.Dropout, _free),
    (L.Flatten, _free),
    (L.Reshape, _free),
    (L.InputLayer, _free),
]


def layer_flops(layer) -> int:
    """FLOPs per image of one (non-model) layer at inference."""
    for cls, rule in RULES:
        if isinstance(layer, cls):
            if isinstance(layer, L.InputLayer):
                return 0
            first = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input  # merge layers
            return int(rule(layer, tuple(first.shape), tuple(layer.output.shape)))
    raise ValueError(f"no FLOP rule for layer '{layer.name}' ({type(layer).__name__}); add one to harness.models.flops.RULES")


def model_flops(model) -> int:
    """FLOPs per image of a built model at inference (nested models walked)."""
    return sum(model_flops(layer) if isinstance(layer, keras.Model) else layer_flops(layer)
               for layer in model.layers)


def flops_table(model, prefix: str = "") -> list[tuple[str, str, int]]:
    """(layer path, type, FLOPs per image) for every counted layer, in order: where the work is."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            rows += flops_table(layer, f"{prefix}{layer.name}/")
        else:
            rows.append((f"{prefix}{layer.name}", type(layer).__name__, layer_flops(layer)))
    return rows
