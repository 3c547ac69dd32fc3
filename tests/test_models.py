"""Every registered model variant, tested the moment it is registered."""

import numpy as np
import pytest

from harness.metrics import LOGITS, _sequence_loss_fn, keras_metrics
from harness.models import MODELS, build_model, stated_parameters


@pytest.mark.parametrize("name", MODELS.list())
def test_parameter_count_matches_docstring(name):
    model = build_model(name)
    assert model.count_params() == stated_parameters(name)


@pytest.mark.parametrize("name", MODELS.list())
def test_one_train_step_and_inference_shape(name):
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(name, policy="paper", seed=0)
    model.compile(optimizer="adam", loss=_sequence_loss_fn, metrics=keras_metrics())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
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
    from harness.evaluate import load_model

    model = build_model("cnn_tiny", policy="jitter", seed=0)
    x = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    path = tmp_path / "m.keras"
    model.save(path)
    again = load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
