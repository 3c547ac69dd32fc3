"""Every augmentation policy, eagerly and compiled: shape, range, per-example randomness, seeded
determinism, identity at inference; the PCA colour noise and rotation layers; colour statistics."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras  # noqa: E402
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.errors import DataError
from harness.models import augment
from harness.models import layers as harness_layers
from harness.models.augment import POLICIES, colour_pca
from harness.models.layers import Crop, PCAColour, Rotate

REPO = Path(__file__).resolve().parents[1]
# "compiled": tf.function / jax.jit; "xla": TensorFlow with jit_compile=True, as GPU training runs
MODES = ["eager", "compiled"] + (["xla"] if keras.backend.backend() == "tensorflow" else [])


def images(n=16, size=64, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype("float32")


class BothModes(keras.Model):
    """Runs a policy in training and in inference mode inside one model, so model.predict compiles
    both (tf.function / jax.jit, and XLA with jit_compile=True) exactly as a train step would."""

    def __init__(self, layer):
        super().__init__()
        self.policy = layer

    def call(self, x):
        return self.policy(x, training=True), self.policy(x, training=False)


def run_policy(name, x, mode, seed=7):
    """(training output, inference output) of a fresh policy ``name`` in ``mode``."""
    layer = POLICIES.create(name, 54, seed=seed)
    if mode == "eager":
        out = layer(x, training=True), layer(x, training=False)
    else:
        model = BothModes(layer)
        model.compile(jit_compile=mode == "xla")
        out = model.predict(x, batch_size=len(x), verbose=0)
    return tuple(keras.ops.convert_to_numpy(t) for t in out)


# ------------------------------------------------------------------- the registry's contract
# (the JAX test below runs these under that backend)

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", POLICIES.list())
def test_registry_policy_contract(name, mode):
    x = np.repeat(images(1), 16, axis=0)  # 16 copies of one image: differences are the augmentation
    train, infer = run_policy(name, x, mode)
    assert train.shape == infer.shape == (16, 54, 54, 3)
    assert train.min() >= 0.0 and train.max() <= 1.0
    np.testing.assert_allclose(infer, x[:, 5:59, 5:59, :], atol=1e-6)  # inference = centre crop exactly
    if mode != "xla":  # (a second XLA compilation costs seconds and tests nothing new)
        again, _ = run_policy(name, x, mode)
        np.testing.assert_array_equal(train, again)  # same seed, same augmentation
    distinct = {train[i].tobytes() for i in range(16)}
    if name == "none":
        assert len(distinct) == 1
    else:
        assert len(distinct) > 8  # per example, not one draw for the whole batch


@pytest.mark.parametrize("name", POLICIES.list())
def test_registry_policy_in_a_model_trains_and_round_trips(name, tmp_path):
    from harness import LOGITS
    from harness.evaluation.loading import load_model
    from harness.models.heads import _sequence_loss_fn

    stats = {"eigenvalues": [0.3, 0.02, 0.001], "eigenvectors": np.eye(3).tolist()}
    inputs = keras.Input((64, 64, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = augment.create(name, 54, seed=1, colour_stats=stats)(x)
    x = keras.layers.Conv2D(4, 3, strides=4)(x)
    model = keras.Model(inputs, keras.layers.Dense(LOGITS)(keras.layers.Flatten()(x)))
    model.compile(optimizer="adam", loss=_sequence_loss_fn)
    images_ = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    y = np.array([[2, 1, 9, 10, 10, 10]] * 4, dtype=np.int32)
    assert np.isfinite(model.train_on_batch(images_, y))
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(images_, verbose=0), model.predict(images_, verbose=0), atol=1e-5)
    pca = [layer for layer in _all_layers(again) if isinstance(layer, PCAColour)]
    assert all(layer.eigenvalues == stats["eigenvalues"] for layer in pca)  # the statistics reloaded
    assert bool(pca) == augment.uses_colour_stats(name)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


@pytest.mark.parametrize("name", POLICIES.list())
def test_registry_policy_under_mixed_precision(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")  # train.precision's setting
    try:
        layer = POLICIES.create(name, 54, seed=1)
    finally:
        keras.config.set_dtype_policy(previous)
    out = keras.ops.convert_to_numpy(keras.ops.cast(layer(images(4), training=True), "float32"))
    assert out.shape == (4, 54, 54, 3) and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", POLICIES.list())
def test_every_policy_documents_itself_and_hides_data_statistics_from_specs(name):
    assert POLICIES.describe(name)
    assert "colour_stats" not in POLICIES.options(name)  # data-derived, never a spec option


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_policies_pass_on_the_jax_backend():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        # every policy's contract, and the everything-at-once policy inside a trained, saved model
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
         "test_registry_policy_contract or (test_registry_policy_in_a_model and full)",
         str(Path(__file__).resolve())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


# ------------------------------------------------------------------- layers

def test_crop_selects_a_real_window_of_each_image():
    x = images(8)
    out = keras.ops.convert_to_numpy(Crop(54, seed=1)(x, training=True))
    for i in range(8):  # every output is exactly some 54x54 window of its own input
        found = any(np.allclose(out[i], x[i, r:r + 54, c:c + 54]) for r in range(11) for c in range(11))
        assert found


def test_pca_colour_shifts_each_example_along_the_scaled_eigenvectors():
    rng = np.random.default_rng(0)
    vectors = np.linalg.qr(rng.normal(size=(3, 3)))[0].T  # rows: an orthonormal basis
    values = np.array([1.0, 0.5, 0.25])
    layer = PCAColour(values, vectors, sigma=0.1, seed=3)
    x = np.full((512, 4, 4, 3), 0.5, "float32")  # mid-grey: shifts of up to 5 sigma are never clipped
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    shift = out - x
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1, :], shift.shape), atol=1e-6)  # per example
    alpha = (shift[:, 0, 0, :] @ vectors.T) / values  # coordinates along each eigenvector / eigenvalue
    np.testing.assert_allclose(alpha.std(axis=0), 0.1, rtol=0.15)
    assert abs(np.corrcoef(alpha.T)[0, 1]) < 0.15  # independent draws per axis
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_pca_colour_rejects_bad_statistics():
    with pytest.raises(ValueError, match="3 eigenvalues"):
        PCAColour([1.0, 2.0], np.eye(3))
    with pytest.raises(DataError, match="wrong shape"):
        POLICIES.create("report", 54, {"eigenvalues": [1, 2, 3], "eigenvectors": [[1, 0], [0, 1]]})


def test_rotation_by_a_quarter_turn_is_rot90():
    x = images(2, size=9)
    rows, cols = harness_layers._rotated_grid(9, 9, keras.ops.full((2, 1, 1), np.pi / 2))
    out = keras.ops.convert_to_numpy(harness_layers._sample_bilinear(x, rows, cols))
    np.testing.assert_allclose(out, np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)


def test_rotation_matches_an_independent_bilinear_reference():
    """A small angle against scipy-free numpy bilinear sampling of the same inverse map."""
    x = images(1, size=20, seed=4)[0].astype(np.float64)
    angle = np.deg2rad(7.0)
    rows, cols = harness_layers._rotated_grid(20, 20, keras.ops.full((1, 1, 1), angle))
    got = keras.ops.convert_to_numpy(harness_layers._sample_bilinear(x[None].astype("float32"), rows, cols))[0]
    c = 9.5
    expected = np.empty_like(x)
    for i in range(20):
        for j in range(20):
            r = np.clip(np.sin(angle) * (j - c) + np.cos(angle) * (i - c) + c, 0, 19)
            q = np.clip(np.cos(angle) * (j - c) - np.sin(angle) * (i - c) + c, 0, 19)
            r0, q0 = int(r), int(q)
            r1, q1 = min(r0 + 1, 19), min(q0 + 1, 19)
            dr, dq = r - r0, q - q0
            expected[i, j] = ((x[r0, q0] * (1 - dq) + x[r0, q1] * dq) * (1 - dr)
                              + (x[r1, q0] * (1 - dq) + x[r1, q1] * dq) * dr)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - x).max() > 0.1  # it did rotate


def test_rotation_angles_stay_within_the_limit():
    # A horizontal line through the centre turns into a line whose slope gives the angle.
    x = np.zeros((64, 65, 65, 3), "float32")
    x[:, 32, :, :] = 1.0
    out = keras.ops.convert_to_numpy(Rotate(10.0, seed=0)(x, training=True))[..., 0]
    col = np.arange(65)
    bright = (out * np.arange(65)[None, :, None]).sum(axis=1) / out.sum(axis=1)  # centre row per column
    slopes = np.array([np.polyfit(col[12:53], b[12:53], 1)[0] for b in bright])
    angles = np.degrees(np.arctan(slopes))
    assert np.abs(angles).max() <= 10.5 and np.abs(angles).max() > 5  # spread over the range
    assert (angles > 0).any() and (angles < 0).any()


# ------------------------------------------------------------------- colour statistics

def _prepared_solid_colours(tmp_path, n=64, seed=0):
    """A prepared split of solid-colour images whose colours vary along one RGB direction."""
    from harness.data.prepare import prepare_split

    rng = np.random.default_rng(seed)
    direction = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    colours = np.clip(np.round((0.5 + rng.uniform(-0.35, 0.35, (n, 1)) * direction) * 255), 0, 255)
    folder = tmp_path / "raw"
    folder.mkdir()
    rows = []
    for i, colour in enumerate(colours.astype(np.uint8)):
        path = folder / f"{i}.png"
        Image.fromarray(np.broadcast_to(colour, (20, 30, 3)).copy()).save(path)
        rows.append({"name": path.name, "path": str(path), "digits": "1", "length": 1,
                     "boxes": np.array([[5.0, 5.0, 10.0, 10.0]]), "width": 30, "height": 20})
    out = prepare_split(pd.DataFrame(rows), tmp_path / "prepared" / "train.h5", image_size=16, workers=1)
    return out, colours / 255.0, direction


def test_colour_pca_finds_the_direction_colours_vary_along(tmp_path):
    path, colours, direction = _prepared_solid_colours(tmp_path)
    stats = colour_pca(path)
    expected = np.linalg.eigvalsh(np.cov(colours, rowvar=False, bias=True))[::-1]
    np.testing.assert_allclose(stats["eigenvalues"], expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.abs(stats["eigenvectors"][0]), np.abs(direction), atol=0.01)
    np.testing.assert_allclose(np.asarray(stats["eigenvectors"]) @ np.asarray(stats["eigenvectors"]).T,
                               np.eye(3), atol=1e-9)
    np.testing.assert_allclose(stats["mean"], colours.mean(axis=0), atol=1e-9)
    assert stats["images"] == 64


def test_colour_pca_reads_a_bounded_seeded_sample(tmp_path):
    path, _, _ = _prepared_solid_colours(tmp_path)
    a = colour_pca(path, sample=10, seed=1)
    assert a["images"] == 10
    assert colour_pca(path, sample=10, seed=1)["eigenvalues"] == a["eigenvalues"]
    assert colour_pca(path, sample=10, seed=2)["eigenvalues"] != a["eigenvalues"]


def test_colour_pca_is_cached_beside_the_file_and_recomputed_when_stale(tmp_path):
    path, _, _ = _prepared_solid_colours(tmp_path)
    first = colour_pca(path)
    cache = path.with_name("train.colour_pca.json")
    assert json.loads(cache.read_text()) == first
    assert sorted(p.name for p in cache.parent.iterdir()) == ["train.colour_pca.json", "train.h5"]  # no temp files
    marked = {**first, "eigenvalues": [9.0, 8.0, 7.0]}
    cache.write_text(json.dumps(marked))
    assert colour_pca(path)["eigenvalues"] == [9.0, 8.0, 7.0]  # read from the cache
    cache.write_text(json.dumps({**marked, "fingerprint": "another file"}))
    assert colour_pca(path) == first  # stale: recomputed
    cache.write_text("{ half a file")
    assert colour_pca(path) == first  # damaged: recomputed


def test_colour_pca_names_a_bad_file(tmp_path):
    with pytest.raises(DataError, match="missing.h5: no such prepared split file"):
        colour_pca(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="bad.h5"):
        colour_pca(bad)


def test_build_for_passes_the_training_data_statistics(tmp_path):
    from harness.spec import load_spec
    from harness.training.setup import build_for

    path, _, _ = _prepared_solid_colours(tmp_path)
    spec = load_spec(REPO / "experiments" / "smoke.yaml", ["augment.policy=full"])
    model = build_for(spec, path)
    pca = [layer for layer in _all_layers(model) if isinstance(layer, PCAColour)]
    assert len(pca) == 1 and pca[0].eigenvalues == colour_pca(path)["eigenvalues"]
    default = [layer for layer in _all_layers(build_for(spec)) if isinstance(layer, PCAColour)]
    assert default[0].eigenvalues == augment.SVHN_COLOUR_STATS["eigenvalues"]


def test_svhn_default_statistics_are_those_of_the_genuine_sample(shared_data, tmp_path):
    from harness.data.prepare import prepare_split
    from harness.data.records import read_records

    records = read_records(shared_data / "svhn-sample" / "train", "labels.csv")
    path = prepare_split(records, tmp_path / "train.h5", image_size=64, box_expand=0.3, workers=1)
    stats = colour_pca(path, sample=2000)
    np.testing.assert_allclose(stats["eigenvalues"], augment.SVHN_COLOUR_STATS["eigenvalues"], atol=2e-6)
    np.testing.assert_allclose(stats["eigenvectors"], augment.SVHN_COLOUR_STATS["eigenvectors"], atol=2e-6)
