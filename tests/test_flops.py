"""The analytic FLOP counter against hand-computed models, and on every registered variant."""

import keras
import pytest

from harness.models.architectures import MODELS, build_model, build_sizes
from harness.models.flops import flops_table, layer_flops, model_flops
from harness.models.layers import Crop, LocallyConnected2D, Maxout


def test_small_model_matches_a_hand_count():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)  # 8x8x4
    x = keras.layers.MaxPooling2D(2)(x)  # 4x4x4
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    conv = 8 * 8 * 4 * (2 * 3 * 3 * 3) + 8 * 8 * 4 + 8 * 8 * 4  # multiply-adds, bias, relu
    pool = 4 * 4 * 4 * 2 * 2
    dense = 5 * 2 * 64 + 5
    assert conv + pool + dense == 15237
    assert model_flops(model) == 15237


def test_harness_layers_match_a_hand_count():
    inputs = keras.Input((5, 5, 2))
    crop = Crop(3, random=False)
    x = crop(inputs)  # 3x3x2
    lc = LocallyConnected2D(3, 3, padding="same", use_bias=False)
    y = lc(x)  # 3x3x3
    conv = keras.layers.Conv2D(6, 1)
    z = conv(y)  # 3x3x6
    maxout = Maxout(2)
    out = maxout(z)  # 3x3x3
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, bn(out))
    assert layer_flops(crop) == 2 * 3 * 5 * 5 * 2 + 2 * 3 * 3 * 5 * 2
    assert layer_flops(lc) == 27 * (2 * 9 * 2)
    assert layer_flops(conv) == 54 * (2 * 3) + 54
    assert layer_flops(maxout) == 27 * 2
    assert layer_flops(bn) == 27 * 2
    assert model_flops(model) == 480 + 972 + 378 + 54 + 54


def test_an_unknown_layer_is_an_error_naming_it():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.LayerNormalization(name="odd_norm")(inputs))
    with pytest.raises(ValueError, match="odd_norm.*LayerNormalization"):
        model_flops(model)


@pytest.mark.parametrize("name", MODELS.list())
def test_every_variant_and_policy_is_counted(name):
    model = build_model(name, policy="full", **build_sizes(name))
    table = flops_table(model)
    assert sum(f for _, _, f in table) == model_flops(model) > 0
    convs = sum(f for _, kind, f in table if kind in ("Conv2D", "PatchConv2D", "LocallyConnected2D", "Dense"))
    assert convs > 0.5 * model_flops(model)  # the weighted layers dominate


def test_a_residual_sum_counts_one_flop_per_value_per_extra_input():
    inputs = keras.Input((3, 3, 4))
    conv = keras.layers.Conv2D(4, 1, use_bias=False, name="c")(inputs)
    total = keras.layers.Add(name="sum")([conv, inputs, conv])
    model = keras.Model(inputs, total)
    assert layer_flops(model.get_layer("sum")) == 2 * 36
    assert model_flops(model) == 36 * 2 * 4 + 2 * 36
