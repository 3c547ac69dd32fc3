"""Every registered model variant, tested the moment it is registered."""

import json

import numpy as np
import pytest

from harness import LOGITS
from harness.models.architectures import (
    MODELS,
    build_model,
    build_sizes,
    stated_parameters,
)
from harness.models.heads import _sequence_loss_fn, keras_metrics
from harness.models.layers import (
    AffineSampler,
    LocallyConnected2D,
    Maxout,
    MaxPooling2x2,
    PatchConv2D,
    SubtractiveNormalization,
    WholeMapConv2D,
    formulation,
)


@pytest.mark.parametrize("name", MODELS.list())
def test_parameter_count_matches_docstring(name):
    model = build_model(name, **build_sizes(name))
    assert model.count_params() == stated_parameters(name)


def test_report2016_docstring_states_its_build_sizes():
    doc = MODELS.get("report2016").__doc__
    assert build_sizes("report2016") == {"image_size": 74, "crop_size": 64}
    assert "Input: 64x64" in doc and "crop_size: 64" in doc and "image_size: 74" in doc


@pytest.mark.parametrize("name", MODELS.list())
def test_one_train_step_and_inference_shape(name):
    import keras

    keras.utils.set_random_seed(0)
    sizes = build_sizes(name)
    model = build_model(name, policy="paper", seed=0, **sizes)
    model.compile(optimizer="adam", loss=_sequence_loss_fn, metrics=keras_metrics())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, sizes["image_size"], sizes["image_size"], 3), dtype=np.uint8)
    y = np.array([[2, 1, 9, 10, 10, 10]] * 8, dtype=np.int32)
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    assert model.predict(x, verbose=0).shape == (8, LOGITS)


def test_inference_is_deterministic():
    model = build_model("cnn_tiny", policy="jitter", seed=3)
    x = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))


def test_saved_model_round_trips(tmp_path):
    from harness.evaluation.loading import load_model

    model = build_model("cnn_tiny", policy="jitter", seed=0)
    x = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    path = tmp_path / "m.keras"
    model.save(path)
    again = load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_goodfellow2014_batch_norm_option_and_bad_norm():
    model = build_model("goodfellow2014", options={"norm": "batch"})
    assert model.count_params() == stated_parameters("goodfellow2014") + 4 * (48 + 64 + 128 + 160 + 4 * 192)
    with pytest.raises(ValueError, match="norm"):
        build_model("goodfellow2014", options={"norm": "local"})


# ------------------------------------------------------------------------------ custom layers

def _naive_locally_connected(x, kernel, bias, k, padding):
    """Reference: an explicit loop over output locations, one kernel per location."""
    batch, height, width, channels = x.shape
    if padding == "same":
        p = k // 2
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out_h, out_w = height, width
    else:
        out_h, out_w = height - k + 1, width - k + 1
    out = np.zeros((batch, out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i:i + k, j:j + k, :].reshape(batch, -1)  # (row, col, channel) order
            loc = i * out_w + j
            out[:, i, j] = patch @ kernel[loc] + bias[loc]
    return out


def _built_lc(shape, filters, k, padding):
    layer = LocallyConnected2D(filters, k, padding=padding)
    layer.build((None, *shape))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_locally_connected_matches_naive_reference(padding):
    layer = _built_lc((5, 4, 3), 2, 3, padding)
    x = np.random.default_rng(1).normal(size=(2, 5, 4, 3)).astype("float32")
    kernel, bias = layer.get_weights()
    expected = _naive_locally_connected(x.astype("float64"), kernel, bias, 3, padding)
    got = np.asarray(layer(x))
    assert got.shape == expected.shape == layer.compute_output_shape((2, 5, 4, 3))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_locally_connected_weights_are_unshared():
    layer = _built_lc((4, 4, 3), 2, 3, "same")
    x = np.random.default_rng(2).normal(size=(1, 4, 4, 3)).astype("float32")
    before = np.asarray(layer(x))
    kernel, bias = layer.get_weights()
    kernel[5] += 1.0  # location 5 = row 1, column 1
    layer.set_weights([kernel, bias])
    changed = np.abs(np.asarray(layer(x)) - before).sum(axis=(0, 3)) > 1e-6
    expected = np.zeros((4, 4), bool)
    expected[1, 1] = True
    np.testing.assert_array_equal(changed, expected)


@pytest.fixture(params=[True, False], ids=["xla", "plain"])
def xla(request):
    """Runs the test with the layers' XLA formulations, then with the plain ones, on this backend."""
    with formulation(request.param):
        yield request.param


def test_the_formulation_follows_the_backend_unless_chosen():
    from harness.backend import backend_name
    from harness.models.layers import _xla

    default = backend_name() == "jax"
    assert _xla() is default
    with formulation(not default):
        assert _xla() is (not default)
        with formulation(default):
            assert _xla() is default
        assert _xla() is (not default)
    assert _xla() is default


def test_subtractive_normalization_zero_local_mean_on_constant_region(xla):
    x = np.zeros((1, 9, 9, 2), "float32")
    x[:, :, :, 0] = 3.0
    x[:, 2:7, 2:7, 1] = 5.0  # a constant 5x5 square on a zero background
    out = np.asarray(SubtractiveNormalization(3)(x))
    np.testing.assert_allclose(out[..., 0], 0.0, atol=1e-6)  # constant everywhere, borders included
    np.testing.assert_allclose(out[:, 3:6, 3:6, 1], 0.0, atol=1e-6)  # windows inside the square
    assert abs(out[0, 2, 2, 1] - (5.0 - 5.0 * 4 / 9)) < 1e-5  # a corner sees 4 of 9 in the square


def test_maxout_is_max_over_consecutive_groups(xla):
    x = np.random.default_rng(3).normal(size=(2, 3, 3, 12)).astype("float32")
    out = np.asarray(Maxout(3)(x))
    np.testing.assert_array_equal(out, x.reshape(2, 3, 3, 4, 3).max(axis=-1))


def test_subtractive_normalization_equals_a_box_mean_over_in_image_positions(xla):
    x = np.random.default_rng(5).normal(size=(2, 5, 7, 3))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    inside = np.pad(np.ones((5, 7)), 1)
    expected = np.empty_like(x)
    for i in range(5):
        for j in range(7):
            window = padded[:, i:i + 3, j:j + 3]
            expected[:, i, j] = x[:, i, j] - window.sum(axis=(1, 2)) / inside[i:i + 3, j:j + 3].sum()
    np.testing.assert_allclose(np.asarray(SubtractiveNormalization(3)(x.astype("float32"))), expected, atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        SubtractiveNormalization(2)


def _values_and_gradients(layer, x):
    """The layer's output on x and the gradient of sum(output * fixed weights) with respect to x and
    the layer's weights, on the current backend."""
    import keras

    from harness.backend import backend_name

    out = keras.ops.convert_to_numpy(layer(x))
    weights = np.random.default_rng(6).normal(size=out.shape).astype("float32")
    name = backend_name()
    if name == "jax":
        import jax

        def f(values, inputs):
            return (layer.stateless_call(values, [], inputs)[0] * weights).sum()

        grads = jax.grad(f, argnums=(0, 1))([v.value for v in layer.trainable_variables], x)
        return out, [np.asarray(g) for g in (*grads[0], grads[1])]
    if name == "tensorflow":
        import tensorflow as tf

        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs) * weights)
        grads = tape.gradient(loss, [*layer.trainable_variables, inputs])
        return out, [np.asarray(g) for g in grads]
    import torch

    inputs = torch.tensor(x, requires_grad=True)
    loss = (layer(inputs) * torch.tensor(weights)).sum()
    loss.backward()
    return out, [v.value.grad.numpy() for v in layer.trainable_variables] + [inputs.grad.numpy()]


@pytest.mark.parametrize("shape,filters,kernel,padding", [
    ((9, 9, 3), 6, 5, "same"),    # a first layer on 3 channels
    ((4, 4, 8), 5, 5, "same"),    # a map smaller than the kernel
    ((6, 5, 4), 3, 3, "valid"),   # valid padding, a non-square map
    ((6, 6, 4), 3, 4, "same"),    # an even kernel: Keras pads the extra row and column at the end
    ((48, 48, 128), 4, 5, "same"),  # many patch values
])
def test_patch_conv2d_equals_keras_conv2d(shape, filters, kernel, padding, xla):
    layer, reference, x = _patch_conv_and_keras_conv(shape, filters, kernel, padding)
    assert layer._patches(x) == xla  # formulation(True) takes the patches unmeasured
    _assert_same_values_and_gradients(layer, reference, x)
    assert layer.get_config() == {**reference.get_config(), "name": layer.name}


def _patch_conv_and_keras_conv(shape, filters, kernel, padding):
    import keras

    reference = keras.layers.Conv2D(filters, kernel, padding=padding, activation="relu")
    layer = PatchConv2D(filters, kernel, padding=padding, activation="relu")
    reference.build((None, *shape))
    layer.build((None, *shape))
    rng = np.random.default_rng(7)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()])
    reference.set_weights(layer.get_weights())
    return layer, reference, rng.normal(size=(2, *shape)).astype("float32")


def _assert_same_values_and_gradients(layer, reference, x):
    for got, want in zip(_values_and_gradients(layer, x), _values_and_gradients(reference, x)):
        for g, w in zip(*((got, want) if isinstance(got, list) else ([got], [want]))):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape,filters,kernel,whole", [
    ((4, 4, 6), 5, 4, True),    # report2016's fc_conv1: the kernel spans the map
    ((1, 1, 7), 3, 1, True),    # its fc_conv2: a 1x1 kernel on a 1x1 map
    ((3, 2, 4), 5, (3, 2), True),  # a non-square map
    ((5, 5, 4), 3, 3, False),   # a kernel smaller than the map: the ordinary convolution
])
def test_whole_map_conv2d_equals_keras_conv2d(shape, filters, kernel, whole):
    """Same weights, config, outputs and gradients as keras.layers.Conv2D, as one matmul where the
    kernel spans the map."""
    import keras

    reference = keras.layers.Conv2D(filters, kernel, padding="valid", use_bias=False)
    layer = WholeMapConv2D(filters, kernel, padding="valid", use_bias=False)
    reference.build((None, *shape))
    layer.build((None, *shape))
    rng = np.random.default_rng(3)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()])
    reference.set_weights(layer.get_weights())
    x = rng.normal(size=(3, *shape)).astype("float32")
    assert layer._whole_map(x) == whole
    _assert_same_values_and_gradients(layer, reference, x)
    assert layer.get_config() == {**reference.get_config(), "name": layer.name}


def test_patch_conv2d_measures_its_formulation_once_per_device(tmp_path, monkeypatch):
    """On JAX, outside formulation(), the faster of the patches and XLA's convolution is measured the
    first time a shape is called, kept in a file per device, and read back, not measured again, by
    the next process; whichever it is, the outputs are Keras'. (tests/test_jax_backend.py runs this
    file on JAX.)"""
    from harness.backend import backend_name
    from harness.models import layers

    if backend_name() != "jax":
        pytest.skip("the formulation is measured on the JAX backend only")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(layers, "_CHOICES", {})  # this process's choices so far: none
    monkeypatch.setattr(layers, "_CHOICES_LOADED", [])
    layer, reference, x = _patch_conv_and_keras_conv((7, 7, 5), 6, 3, "same")
    path = layers.choices_file()
    assert path.parent == tmp_path / "svhn-harness" and not path.exists()
    _assert_same_values_and_gradients(layer, reference, x)
    (key, measured), = json.loads(path.read_text()).items()
    assert key == "7x7x5 k3x3 f6 same float32 b2"
    assert measured["choice"] in ("patches", "xla") and measured["patches_ms"] > 0 and measured["xla_ms"] > 0

    def no_timing(*args):
        raise AssertionError("measured again")

    timing = layers._time_formulations
    monkeypatch.setattr(layers, "_time_formulations", no_timing)
    for choice in ("xla", "patches"):  # a new process reads the file (here: the choice edited in it)
        path.write_text(json.dumps({key: {**measured, "choice": choice}}))
        layers._CHOICES.clear()
        layers._CHOICES_LOADED.clear()
        assert layer._patches(x) == (choice == "patches")
        _assert_same_values_and_gradients(layer, reference, x)

    path.write_text("{not json")  # a damaged file is only a cache: measured again and rewritten
    monkeypatch.setattr(layers, "_time_formulations", timing)
    layers._CHOICES.clear()
    layers._CHOICES_LOADED.clear()
    layer._patches(x)
    assert list(json.loads(path.read_text())) == [key]


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("shape", [(6, 6, 3), (7, 5, 2)])
def test_max_pooling_2x2_equals_keras_max_pooling(strides, shape, xla):
    import keras

    # distinct values, so that the gradient (to the maximum of each window) has one answer
    x = np.random.default_rng(8).permutation(2 * int(np.prod(shape))).reshape(2, *shape).astype("float32")
    layer = MaxPooling2x2(strides=strides)
    reference = keras.layers.MaxPooling2D(2, strides=strides, padding="same")
    got, want = _values_and_gradients(layer, x), _values_and_gradients(reference, x)
    assert got[0].shape == want[0].shape == layer.compute_output_shape((2, *shape))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1][-1], want[1][-1], rtol=1e-6, atol=1e-6)  # overlapping windows: sums


def test_maxout_gradient_goes_to_each_group_maximum(xla):
    x = np.random.default_rng(9).permutation(2 * 3 * 3 * 12).reshape(2, 3, 3, 12).astype("float32")
    out, grads = _values_and_gradients(Maxout(3), x)
    grouped = x.reshape(2, 3, 3, 4, 3)
    expected = (grouped == grouped.max(axis=-1, keepdims=True)).astype("float32")
    weights = np.random.default_rng(6).normal(size=out.shape).astype("float32")
    np.testing.assert_allclose(grads[-1], (expected * weights[..., None]).reshape(x.shape), rtol=1e-6)


def test_custom_layers_round_trip_through_load_model(tmp_path):
    import keras

    from harness.evaluation.loading import load_model

    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    x = Maxout(3)(x)
    x = SubtractiveNormalization(3)(x)
    x = PatchConv2D(4, 3, padding="same", activation="relu")(x)
    x = MaxPooling2x2(strides=1)(x)
    x = LocallyConnected2D(4, 3, padding="same", activation="relu")(x)
    x = LocallyConnected2D(2, 3, padding="valid")(x)
    model = keras.Model(inputs, x)
    data = np.random.default_rng(4).normal(size=(3, 6, 6, 3)).astype("float32")
    path = tmp_path / "layers.keras"
    model.save(path)
    again = load_model(path)
    assert [type(layer).__name__ for layer in again.layers] == [type(layer).__name__ for layer in model.layers]
    assert again.layers[-1].get_config()["padding"] == "valid"
    np.testing.assert_allclose(again.predict(data, verbose=0), model.predict(data, verbose=0), rtol=1e-5, atol=1e-5)


def test_affine_sampler_identity_shift_and_gradient(tmp_path):
    import keras

    from harness.evaluation.loading import load_model

    images = np.random.default_rng(5).normal(size=(2, 8, 10, 3)).astype("float32")
    identity = np.array([[1, 0, 0, 0, 1, 0]] * 2, dtype="float32")
    out = keras.ops.convert_to_numpy(AffineSampler()([images, identity]))
    np.testing.assert_allclose(out, images, atol=1e-5)
    # tx of 2 pixels (the width spans 2 in these coordinates): read 2 columns to the right, the edge beyond
    shifted = keras.ops.convert_to_numpy(AffineSampler()([images, identity + [0, 0, 2 * 2 / 9, 0, 0, 0]]))
    np.testing.assert_allclose(shifted[:, :, :8], images[:, :, 2:], atol=1e-5)
    np.testing.assert_allclose(shifted[:, :, 8:], np.repeat(images[:, :, 9:], 2, axis=2), atol=1e-5)
    # a 2x zoom on the centre: the corner output pixel reads (row 1.75, column 2.25), bilinear
    zoom = keras.ops.convert_to_numpy(AffineSampler()([images, np.array([[0.5, 0, 0, 0, 0.5, 0]] * 2, "float32")]))
    expected = (images[:, 1, 2] * 0.25 * 0.75 + images[:, 1, 3] * 0.25 * 0.25
                + images[:, 2, 2] * 0.75 * 0.75 + images[:, 2, 3] * 0.75 * 0.25)
    np.testing.assert_allclose(zoom[:, 0, 0], expected, atol=1e-5)

    # the localisation net starts at the identity, and the loss reaches its weights through the sampler
    keras.utils.set_random_seed(0)
    model = build_model("stn_report2016", policy="none", seed=0, **build_sizes("stn_report2016"))
    trunk = model.get_layer("stn_report2016")
    theta = keras.Model(trunk.input, trunk.get_layer("stn_theta").output)
    x = np.random.default_rng(6).integers(0, 256, (4, 74, 74, 3), dtype=np.uint8)
    crops = np.random.default_rng(7).normal(size=(4, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(theta.predict(crops, verbose=0), identity[:1].repeat(4, 0), atol=1e-6)
    model.compile(optimizer="adam", loss=_sequence_loss_fn)
    kernel = trunk.get_layer("stn_theta").kernel
    before = keras.ops.convert_to_numpy(kernel).copy()
    model.train_on_batch(x, np.array([[2, 1, 9, 10, 10, 10]] * 4, dtype=np.int32))
    assert not np.allclose(keras.ops.convert_to_numpy(kernel), before)
    path = tmp_path / "stn.keras"
    model.save(path)
    np.testing.assert_allclose(load_model(path).predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
