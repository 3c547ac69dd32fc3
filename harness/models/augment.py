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
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness import atomic
from harness.backend import load_keras
from harness.data.splitfile import PreparedSplit
from harness.errors import DataError
from harness.registry import Registry

POLICIES = Registry("augmentation policy")


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


def _layers():
    """harness.models.layers, where the policies' Keras layers are: imported when a policy is built,
    so that listing and checking policies needs no Keras."""
    from harness.models import layers

    return layers


def _stack(name: str, *layers):
    return load_keras().Sequential(list(layers), name=f"augment_{name}")


@POLICIES.register
def none(crop_size: int, *, seed: int | None = None):
    """No augmentation: the centre crop, in training as at inference."""
    return _stack("none", _layers().Crop(crop_size, random=False))


@POLICIES.register
def paper(crop_size: int, *, seed: int | None = None):
    """Goodfellow et al. 2014: a random crop per example (64x64 -> 54x54)."""
    return _stack("paper", _layers().Crop(crop_size, random=True, seed=seed))


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
        _layers().Crop(crop_size, random=True, seed=seed),
        _layers().ColorJitter(brightness, contrast, saturation, seed=None if seed is None else seed + 1),
    )


def _seed(seed: int | None, offset: int) -> int | None:
    """Each random layer of a policy gets its own seed, so their draws are not correlated."""
    return None if seed is None else seed + offset


def _pca_layer(colour_stats: Mapping[str, Any] | None, sigma: float, seed: int | None):
    stats = SVHN_COLOUR_STATS if colour_stats is None else colour_stats
    check_colour_stats(stats)
    return _layers().PCAColour(stats["eigenvalues"], stats["eigenvectors"], sigma=sigma, seed=seed)


@POLICIES.register
def report(crop_size: int, colour_stats: Mapping[str, Any] | None = None, *, seed: int | None = None,
           sigma: float = 0.1):
    """Random crop per example plus Krizhevsky's PCA colour noise (the report's augmentation).

    The colour noise shifts every pixel of an example by ``sum_i alpha_i lambda_i p_i``,
    ``alpha_i ~ N(0, sigma)``, with (lambda_i, p_i) the eigenvalues/eigenvectors of the training
    set's RGB covariance (:func:`colour_pca`; training runs pass their own data's).
    """
    return _stack("report", _layers().Crop(crop_size, random=True, seed=seed), _pca_layer(colour_stats, sigma, _seed(seed, 1)))


@POLICIES.register
def rotate(crop_size: int, *, seed: int | None = None, max_degrees: float = 10.0):
    """Random rotation (uniform in +-max_degrees) then a random crop, per example.

    The rotation is about the image centre, bilinear; corners take the nearest edge pixel. It runs
    on the prepared image before the crop, so at +-10 degrees a centred 54x54 crop of a 64x64 image
    never reaches a filled corner.
    """
    return _stack("rotate", _layers().Rotate(max_degrees, seed=_seed(seed, 2)), _layers().Crop(crop_size, random=True, seed=seed))


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
        _layers().Rotate(max_degrees, seed=_seed(seed, 2)),
        _layers().Crop(crop_size, random=True, seed=seed),
        _pca_layer(colour_stats, sigma, _seed(seed, 1)),
        _layers().ColorJitter(brightness, contrast, saturation, seed=_seed(seed, 3)),
    )


def uses_colour_stats(name: str) -> bool:
    """Whether policy ``name`` takes the training data's colour statistics."""
    return "colour_stats" in inspect.signature(POLICIES.get(name)).parameters


def create(name: str, crop_size: int, *, seed: int | None = None,
           colour_stats: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None):
    """Policy ``name`` as a layer; ``colour_stats`` reach only the policies that use them."""
    args = (colour_stats,) if colour_stats is not None and uses_colour_stats(name) else ()
    return POLICIES.create(name, crop_size, *args, seed=seed, **dict(options or {}))
