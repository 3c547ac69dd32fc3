"""Augmentation policies: Keras layers that run inside the model, on the accelerator, at training time.

A policy maps float images in [0, 1] of the prepared size (e.g. 64x64) to the model's input size
(e.g. 54x54). At inference every policy is the same deterministic centre crop, so a trained model
needs no separate preprocessing. Augmentation is never a multiplied copy of the data on disk.

Registry contract (see harness.registry): ``POLICIES.create(name, crop_size, seed=..., **options)``
returns a layer; keyword-only arguments with defaults are the policy's options.
"""

from __future__ import annotations

from harness.backend import load_keras
from harness.registry import Registry

keras = load_keras()
ops = keras.ops

POLICIES = Registry("augmentation policy")


@keras.saving.register_keras_serializable(package="harness")
class Crop(keras.layers.Layer):
    """Square crop of ``size``: a random offset PER EXAMPLE when training, the centre otherwise.

    keras.layers.RandomCrop draws one offset per batch; here each example gets its own, expressed as
    two one-hot selection matmuls so it is differentiable, backend-agnostic and cheap on accelerators.
    """

    def __init__(self, size: int, random: bool = True, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.random = random
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _offsets(self, batch, extent: int, training: bool):
        slack = extent - self.size
        if training and self.random and slack > 0:
            return keras.random.randint((batch,), 0, slack + 1, seed=self.seed_generator, dtype="int32")
        return ops.full((batch,), slack // 2, dtype="int32")

    def call(self, images, training=None):
        height, width = images.shape[1], images.shape[2]
        batch = ops.shape(images)[0]
        span = ops.arange(self.size, dtype="int32")[None, :]
        rows = ops.one_hot(self._offsets(batch, height, bool(training))[:, None] + span, height, dtype=images.dtype)
        cols = ops.one_hot(self._offsets(batch, width, bool(training))[:, None] + span, width, dtype=images.dtype)
        out = ops.einsum("bih,bhwc->biwc", rows, images)
        return ops.einsum("bjw,biwc->bijc", cols, out)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "random": self.random, "seed": self.seed}


@keras.saving.register_keras_serializable(package="harness")
class ColorJitter(keras.layers.Layer):
    """Per-example brightness shift, contrast and saturation scaling (training only), clipped to [0, 1]."""

    def __init__(self, brightness: float, contrast: float, saturation: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.saturation, self.seed = brightness, contrast, saturation, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, low, high):
        return keras.random.uniform((batch, 1, 1, 1), low, high, seed=self.seed_generator)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        grey = ops.mean(images, axis=-1, keepdims=True)
        x = grey + (images - grey) * self._uniform(batch, 1 - self.saturation, 1 + self.saturation)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        x = mean + (x - mean) * self._uniform(batch, 1 - self.contrast, 1 + self.contrast)
        x = x + self._uniform(batch, -self.brightness, self.brightness)
        return ops.clip(x, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "seed": self.seed,
        }


def _stack(name: str, *layers) -> keras.Sequential:
    return keras.Sequential(list(layers), name=f"augment_{name}")


@POLICIES.register
def none(crop_size: int, *, seed: int | None = None):
    """No augmentation: the centre crop, in training as at inference."""
    return _stack("none", Crop(crop_size, random=False))


@POLICIES.register
def paper(crop_size: int, *, seed: int | None = None):
    """Goodfellow et al. 2014: a random crop per example (64x64 -> 54x54)."""
    return _stack("paper", Crop(crop_size, random=True, seed=seed))


@POLICIES.register
def jitter(
    crop_size: int,
    *,
    seed: int | None = None,
    brightness: float = 0.15,
    contrast: float = 0.3,
    saturation: float = 0.5,
):
    """Random crop per example plus brightness/contrast/saturation jitter."""
    return _stack(
        "jitter",
        Crop(crop_size, random=True, seed=seed),
        ColorJitter(brightness, contrast, saturation, seed=None if seed is None else seed + 1),
    )
