"""Model variants: thin registered functions over private builders (timm style).

Every variant maps standardized float images (crop x crop x 3) to a feature vector (its "trunk");
:func:`build_model` wraps it into the full model the harness trains:

    uint8 image (S x S x 3) -> [0, 1] -> augmentation policy (crop; random only when training)
      -> per-image standardization -> trunk -> heads -> logits (7 + 5 x 10)

The heads are one Dense layer of 57 units: mathematically the length softmax (0..5, ">5") and five
digit softmaxes of the paper, each a separate linear map of the shared features.

Registry contract: ``MODELS.create(name, input_shape, **options)`` returns the trunk (a keras.Model);
keyword-only arguments with defaults are the variant's options. Each variant's docstring states the
full model's parameter count at its defaults (54x54 input); tests/test_models.py checks it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from harness import augment
from harness.backend import load_keras
from harness.metrics import LOGITS
from harness.registry import Registry

keras = load_keras()
ops = keras.ops
layers = keras.layers

MODELS = Registry("model")


@keras.saving.register_keras_serializable(package="harness")
class Standardize(layers.Layer):
    """Per-image zero mean and unit variance: street numbers vary wildly in brightness and contrast."""

    def call(self, images):
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        std = ops.std(images, axis=(1, 2, 3), keepdims=True)
        return (images - mean) / ops.maximum(std, 1e-3)


def build_model(
    name: str,
    *,
    image_size: int = 64,
    crop_size: int = 54,
    policy: str = "none",
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    policy_options: Mapping[str, Any] | None = None,
) -> keras.Model:
    """The full trainable model: uint8 images in, logits (batch, 57) out."""
    trunk = MODELS.create(name, (crop_size, crop_size, 3), **dict(options or {}))
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="to_unit")(inputs)
    x = augment.POLICIES.create(policy, crop_size, seed=seed, **dict(policy_options or {}))(x)
    x = Standardize(name="standardize")(x)
    logits = layers.Dense(LOGITS, name="heads")(trunk(x))
    return keras.Model(inputs, logits, name=name)


def stated_parameters(name: str) -> int:
    """The parameter count written in a variant's docstring ("Parameters: 1,234,567")."""
    doc = MODELS.get(name).__doc__ or ""
    match = re.search(r"Parameters:\s*([\d,]+)", doc)
    if not match:
        raise ValueError(f"model '{name}': docstring states no 'Parameters: N'")
    return int(match.group(1).replace(",", ""))


# ------------------------------------------------------------------------------ private builders

def _conv_bn(x, filters: int, kernel: int, name: str):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _plain_cnn(
    input_shape: Sequence[int], widths: Sequence[int], dense: int, dropout: float, name: str
) -> keras.Model:
    """Conv-BN-ReLU blocks, 2x2 max pooling after all but the last, then one hidden dense layer.

    Flattening (not global pooling) keeps where each feature is, which is what tells the digit
    positions apart.
    """
    inputs = keras.Input(tuple(input_shape), name="standardized")
    x = inputs
    for i, filters in enumerate(widths):
        x = _conv_bn(x, filters, 5 if i == 0 else 3, name=f"block{i + 1}")
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="flatten_dropout")(x)
    x = layers.Dense(dense, activation="relu", name="hidden")(x)
    x = layers.Dropout(dropout, name="hidden_dropout")(x)
    return keras.Model(inputs, x, name=name)


# ------------------------------------------------------------------------------ registered variants

@MODELS.register
def cnn_tiny(input_shape, *, dropout: float = 0.1):
    """A very small CNN for tests and smoke runs (widths 8-16-16-32, hidden 64).

    Parameters: 86,449
    """
    return _plain_cnn(input_shape, (8, 16, 16, 32), 64, dropout, "cnn_tiny")


@MODELS.register
def cnn_small(input_shape, *, dropout: float = 0.25):
    """A CPU-sized CNN (widths 16-32-64-96, hidden 256): the quickstart model.

    Parameters: 980,009
    """
    return _plain_cnn(input_shape, (16, 32, 64, 96), 256, dropout, "cnn_small")
