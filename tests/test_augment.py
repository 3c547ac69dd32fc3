"""Every augmentation policy: shape, range, per-example randomness, seeded determinism, identity at inference."""

import numpy as np
import pytest

from harness.augment import POLICIES, Crop

import keras  # noqa: E402


def images(n=16, size=64, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("name", POLICIES.list())
@pytest.mark.parametrize("compiled", [False, True])
def test_policy_shape_range_and_inference_centre_crop(name, compiled):
    layer = POLICIES.create(name, 54, seed=7)
    x = images()
    fn = layer
    if compiled:  # the same layer inside a compiled model, as in training
        inp = keras.Input((64, 64, 3))
        model = keras.Model(inp, layer(inp))
        model.compile(jit_compile=False)
        fn = lambda t, training=False: model(t, training=training)  # noqa: E731
    train = keras.ops.convert_to_numpy(fn(x, training=True))
    infer = keras.ops.convert_to_numpy(fn(x, training=False))
    assert train.shape == infer.shape == (16, 54, 54, 3)
    assert train.min() >= 0.0 and train.max() <= 1.0
    np.testing.assert_allclose(infer, x[:, 5:59, 5:59, :], atol=1e-6)  # inference = centre crop exactly


@pytest.mark.parametrize("name", [n for n in POLICIES.list() if n != "none"])
def test_training_policy_is_random_per_example_and_seeded(name):
    x = np.repeat(images(1), 16, axis=0)  # 16 copies of one image
    out1 = keras.ops.convert_to_numpy(POLICIES.create(name, 54, seed=11)(x, training=True))
    out2 = keras.ops.convert_to_numpy(POLICIES.create(name, 54, seed=11)(x, training=True))
    np.testing.assert_array_equal(out1, out2)  # same seed, same augmentation
    distinct = {out1[i].tobytes() for i in range(16)}
    assert len(distinct) > 8  # per example, not one draw for the whole batch


def test_crop_selects_a_real_window_of_each_image():
    x = images(8)
    out = keras.ops.convert_to_numpy(Crop(54, seed=1)(x, training=True))
    for i in range(8):  # every output is exactly some 54x54 window of its own input
        found = any(np.allclose(out[i], x[i, r:r + 54, c:c + 54]) for r in range(11) for c in range(11))
        assert found
