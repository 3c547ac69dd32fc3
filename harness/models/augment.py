"""Augmentation policies: Keras layers that run inside the model, on the accelerator, at training time.

A policy maps float images in [0, 1] of the prepared size (e.g. 64x64) to the model's input size
(e.g. 54x54). At inference every policy is the same deterministic centre crop, so a trained model
needs no separate preprocessing. Augmentation is never a multiplied copy of the data on disk.

Registry contract (see harness.registry): ``POLICIES.create(name, crop_size, seed=..., **options)``
returns a layer; keyword-only arguments with defaults are the policy's options (settable in a spec).
A policy that uses statistics of the training data (Krizhevsky's PCA colour noise) takes them as a
second positional argument ``colour_stats`` (see :func:`colour_pca`): they come from the data, not
from the spec, and default to :data:`SVHN_COLOUR_STATS`. :func:`create` passes them only to the
policies that take them.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness import atomic
from harness.backend import load_keras
from harness.data.splitfile import PreparedSplit
from harness.errors import DataError
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

    def _uniform(self, batch, low, high, dtype):
        # drawn in float32, then in the images' dtype (bfloat16/float16 under mixed precision)
        return ops.cast(keras.random.uniform((batch, 1, 1, 1), low, high, seed=self.seed_generator), dtype)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        grey = ops.mean(images, axis=-1, keepdims=True)
        x = grey + (images - grey) * self._uniform(batch, 1 - self.saturation, 1 + self.saturation, images.dtype)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        x = mean + (x - mean) * self._uniform(batch, 1 - self.contrast, 1 + self.contrast, images.dtype)
        x = x + self._uniform(batch, -self.brightness, self.brightness, images.dtype)
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


@keras.saving.register_keras_serializable(package="harness")
class PCAColour(keras.layers.Layer):
    """Krizhevsky et al. 2012 ("AlexNet") PCA colour noise, per example, training only.

    Each example gets ``alpha ~ N(0, sigma)`` (3 values) and every pixel gets
    ``sum_i alpha_i * eigenvalues[i] * eigenvectors[i]`` added: a shift along the principal axes of
    the training set's RGB covariance, larger along the axes the data varies along. The result is
    clipped to [0, 1]. ``eigenvectors[i]`` is the unit eigenvector of ``eigenvalues[i]`` (rows, not
    columns); both live in the config, so a saved model reloads without the data.
    """

    def __init__(self, eigenvalues, eigenvectors, sigma: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.eigenvalues = [float(v) for v in eigenvalues]
        self.eigenvectors = [[float(v) for v in row] for row in eigenvectors]
        if len(self.eigenvalues) != 3 or [len(r) for r in self.eigenvectors] != [3, 3, 3]:
            raise ValueError("PCAColour needs 3 eigenvalues and 3 eigenvectors of 3 values (RGB)")
        self.sigma, self.seed = float(sigma), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        alpha = keras.random.normal((ops.shape(images)[0], 3), stddev=self.sigma, seed=self.seed_generator)
        weights = alpha * ops.convert_to_tensor(self.eigenvalues, dtype=alpha.dtype)  # (B, 3)
        shift = ops.matmul(weights, ops.convert_to_tensor(self.eigenvectors, dtype=alpha.dtype))  # (B, 3)
        return ops.clip(images + ops.cast(shift, images.dtype)[:, None, None, :], 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors,
                "sigma": self.sigma, "seed": self.seed}


@keras.saving.register_keras_serializable(package="harness")
class Rotate(keras.layers.Layer):
    """Rotation about the image centre by a uniform random angle in [-max_degrees, max_degrees] per
    example (training only), bilinear; pixels that would come from outside take the nearest edge pixel.

    Written as four gathers with keras.ops rather than keras.ops.image.affine_transform: on
    TensorFlow that op has no XLA kernel, and GPU training compiles with XLA.
    """

    def __init__(self, max_degrees: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_degrees, self.seed = float(max_degrees), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.max_degrees == 0:
            return images
        batch = ops.shape(images)[0]
        limit = self.max_degrees * math.pi / 180
        angle = keras.random.uniform((batch, 1, 1), -limit, limit, seed=self.seed_generator)
        return _sample_bilinear(images, *_rotated_grid(images.shape[1], images.shape[2], angle))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_degrees": self.max_degrees, "seed": self.seed}


def _rotated_grid(height: int, width: int, angle):
    """Source (row, column) of every output pixel, (B, H, W) each, for rotations by ``angle`` (B, 1, 1)."""
    cy, cx = (height - 1) / 2, (width - 1) / 2
    y = ops.arange(height, dtype="float32")[None, :, None] - cy
    x = ops.arange(width, dtype="float32")[None, None, :] - cx
    cos, sin = ops.cos(angle), ops.sin(angle)
    rows = ops.clip(sin * x + cos * y + cy, 0.0, height - 1.0)  # clamping = nearest-edge fill
    cols = ops.clip(cos * x - sin * y + cx, 0.0, width - 1.0)
    return rows, cols


def _sample_bilinear(images, rows, cols):
    """images (B, H, W, C) read at fractional (rows, cols) (B, H', W'), bilinear."""
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    flat = ops.reshape(images, (-1, height * width, channels))
    r0, c0 = ops.floor(rows), ops.floor(cols)
    dr, dc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = ops.cast(r0, "int32"), ops.cast(c0, "int32")
    r1, c1 = ops.minimum(r0 + 1, height - 1), ops.minimum(c0 + 1, width - 1)

    def at(r, c):
        index = ops.reshape(r * width + c, (-1, rows.shape[1] * rows.shape[2], 1))
        index = ops.repeat(index, channels, axis=2)
        return ops.reshape(ops.take_along_axis(flat, index, axis=1), (-1, rows.shape[1], rows.shape[2], channels))

    dr, dc = ops.cast(dr, images.dtype), ops.cast(dc, images.dtype)
    top = at(r0, c0) * (1 - dc) + at(r0, c1) * dc
    bottom = at(r1, c0) * (1 - dc) + at(r1, c1) * dc
    return top * (1 - dr) + bottom * dr


# ------------------------------------------------------------------------- colour statistics

PCA_SAMPLE = 2000  # images read to estimate the 3x3 RGB covariance: ~8M pixels, ~25 MB of reads
_PCA_CHUNK = 256  # images converted to float at a time, so memory stays bounded


# Measured with colour_pca on the first 2000 images of the genuine SVHN train split, prepared as the
# paper does (boxes' union + 30%, black past the image's edge, 64x64); tests/test_augment.py
# recomputes them when that sample is present. Used by a PCA policy built without data (e.g.
# build_model in a notebook).
SVHN_COLOUR_STATS = {
    "eigenvalues": [0.133435, 0.004421, 0.000682],
    "eigenvectors": [[0.571524, 0.589828, 0.570495],
                     [-0.631716, -0.127472, 0.764647],
                     [-0.523732, 0.797405, -0.299751]],
}


def colour_pca(prepared_path: str | os.PathLike, *, sample: int = PCA_SAMPLE, seed: int = 0) -> dict:
    """Eigenvalues and eigenvectors of the RGB pixel covariance of a prepared split file (pixels in
    [0, 1]), from ``sample`` images drawn with ``seed``: the statistics of :class:`PCAColour`.

    Cached beside the file as ``<stem>.colour_pca.json`` (written atomically), keyed by the file's
    fingerprint, so a re-prepared file gets fresh statistics. Returns ``{"eigenvalues": [3],
    "eigenvectors": [[3] x 3] (rows), "mean": [3], "images": n, "fingerprint", "sample", "seed"}``.
    """
    split = PreparedSplit(prepared_path)
    path = split.path
    cache = path.with_name(f"{path.stem}.colour_pca.json")
    key = {"fingerprint": split.fingerprint, "sample": int(sample), "seed": int(seed)}
    cached = _read_cached(cache, key)
    if cached is not None:
        return cached
    if split.count == 0:
        raise DataError(path, "holds no images to compute colour statistics from")
    rows = np.sort(np.random.default_rng(seed).choice(split.count, size=min(sample, split.count), replace=False))
    images = split.images(rows)  # one sorted read
    stats = {**_pca(images), "images": len(rows), **key}
    try:
        atomic.write_text(cache, json.dumps(stats, indent=1))
    except (OSError, DataError):  # a read-only data folder: the statistics are cheap to compute again
        pass
    return stats


def _read_cached(cache: Path, key: dict) -> dict | None:
    try:
        stats = json.loads(cache.read_text())
        check_colour_stats(stats, cache)
    except (OSError, ValueError, DataError):  # absent, from an older version, or damaged: recompute
        return None
    return stats if all(stats.get(k) == v for k, v in key.items()) else None


def _pca(images: np.ndarray) -> dict:
    """Covariance of all pixels of uint8 ``images`` (N, H, W, 3), accumulated in float64 chunks."""
    total, outer, n = np.zeros(3), np.zeros((3, 3)), 0
    for start in range(0, len(images), _PCA_CHUNK):
        x = images[start:start + _PCA_CHUNK].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        outer += x.T @ x
        n += len(x)
    mean = total / n
    cov = outer / n - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(cov)  # ascending, eigenvectors in columns
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order].T
    # An eigenvector's sign is arbitrary (alpha is symmetric): fix it so the cache is reproducible.
    signs = np.sign(vectors[np.arange(3), np.abs(vectors).argmax(axis=1)])
    vectors = vectors * signs[:, None]
    return {"eigenvalues": values.tolist(), "eigenvectors": vectors.tolist(), "mean": mean.tolist()}


def check_colour_stats(stats: Mapping[str, Any], source: str | os.PathLike = "colour statistics") -> None:
    """DataError naming ``source`` unless ``stats`` has 3 eigenvalues >= 0 and 3 eigenvectors of 3
    finite values."""
    try:
        values = np.asarray(stats["eigenvalues"], dtype=np.float64)
        vectors = np.asarray(stats["eigenvectors"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise DataError(source, "colour statistics need 'eigenvalues' (3) and 'eigenvectors' (3 x 3)") from None
    if values.shape != (3,) or vectors.shape != (3, 3) or not np.isfinite(vectors).all() or not (values >= 0).all():
        raise DataError(source, f"colour statistics have the wrong shape or values: eigenvalues "
                                f"{values.shape}, eigenvectors {vectors.shape} (need (3,), (3, 3), finite, >= 0)")


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


def _seed(seed: int | None, offset: int) -> int | None:
    """Each random layer of a policy gets its own seed, so their draws are not correlated."""
    return None if seed is None else seed + offset


def _pca_layer(colour_stats: Mapping[str, Any] | None, sigma: float, seed: int | None) -> PCAColour:
    stats = SVHN_COLOUR_STATS if colour_stats is None else colour_stats
    check_colour_stats(stats)
    return PCAColour(stats["eigenvalues"], stats["eigenvectors"], sigma=sigma, seed=seed)


@POLICIES.register
def report(crop_size: int, colour_stats: Mapping[str, Any] | None = None, *, seed: int | None = None,
           sigma: float = 0.1):
    """Random crop per example plus Krizhevsky's PCA colour noise (the report's augmentation).

    The colour noise shifts every pixel of an example by ``sum_i alpha_i lambda_i p_i``,
    ``alpha_i ~ N(0, sigma)``, with (lambda_i, p_i) the eigenvalues/eigenvectors of the training
    set's RGB covariance (:func:`colour_pca`; training runs pass their own data's).
    """
    return _stack("report", Crop(crop_size, random=True, seed=seed), _pca_layer(colour_stats, sigma, _seed(seed, 1)))


@POLICIES.register
def rotate(crop_size: int, *, seed: int | None = None, max_degrees: float = 10.0):
    """Random rotation (uniform in +-max_degrees) then a random crop, per example.

    The rotation is about the image centre, bilinear; corners take the nearest edge pixel. It runs
    on the prepared image before the crop, so at +-10 degrees a centred 54x54 crop of a 64x64 image
    never reaches a filled corner.
    """
    return _stack("rotate", Rotate(max_degrees, seed=_seed(seed, 2)), Crop(crop_size, random=True, seed=seed))


@POLICIES.register
def full(crop_size: int, colour_stats: Mapping[str, Any] | None = None, *, seed: int | None = None,
         max_degrees: float = 10.0, sigma: float = 0.1, brightness: float = 0.15, contrast: float = 0.3,
         saturation: float = 0.5):
    """Everything per example: rotation, random crop, PCA colour noise, colour jitter.

    In that order: the rotation as in ``rotate``, the crop as in ``paper``, the PCA colour noise as in
    ``report``, then brightness/contrast/saturation jitter as in ``jitter``.
    """
    return _stack(
        "full",
        Rotate(max_degrees, seed=_seed(seed, 2)),
        Crop(crop_size, random=True, seed=seed),
        _pca_layer(colour_stats, sigma, _seed(seed, 1)),
        ColorJitter(brightness, contrast, saturation, seed=_seed(seed, 3)),
    )


def uses_colour_stats(name: str) -> bool:
    """Whether policy ``name`` takes the training data's colour statistics."""
    return "colour_stats" in inspect.signature(POLICIES.get(name)).parameters


def create(name: str, crop_size: int, *, seed: int | None = None,
           colour_stats: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None):
    """Policy ``name`` as a layer; ``colour_stats`` reach only the policies that use them."""
    args = (colour_stats,) if colour_stats is not None and uses_colour_stats(name) else ()
    return POLICIES.create(name, crop_size, *args, seed=seed, **dict(options or {}))
