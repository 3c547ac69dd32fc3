"""Model variants: thin registered functions over private builders (timm style).

Every variant maps standardized float images (crop x crop x 3) to a feature vector (its "trunk");
:func:`build_model` wraps it into the full model the harness trains:

    uint8 image (S x S x 3) -> [0, 1] -> augmentation policy (crop; random only when training)
      -> per-image standardization -> trunk -> heads -> logits (7 + 5 x 10)

The heads are one Dense layer of 57 units: mathematically the length softmax (0..5, ">5") and five
digit softmaxes of the paper, each a separate linear map of the shared features.

Registry contract: ``MODELS.create(name, input_shape, **options)`` returns the trunk (a keras.Model);
keyword-only arguments with defaults are the variant's options. Each variant's docstring states the
full model's parameter count at its defaults (54x54 input, or the sizes in :data:`BUILD_SIZES`);
tests/test_models.py checks it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from harness import LOGITS
from harness.backend import deferred_keras
from harness.models import augment
from harness.registry import Registry

# Keras on first use: the registry (names, options, docstrings) is listed and checked without it.
keras = deferred_keras()
layers = deferred_keras("layers")

MODELS = Registry("model")

# Variants designed for other than the default 64x64 image / 54x54 crop: the build_model sizes their
# stated parameter count (and their tests) use. Specs running them set data.image_size and
# augment.crop_size to match.
BUILD_SIZES: dict[str, dict[str, int]] = {
    "report2016": {"image_size": 74, "crop_size": 64},
    "stn_report2016": {"image_size": 74, "crop_size": 64},
}


def build_model(
    name: str,
    *,
    image_size: int = 64,
    crop_size: int = 54,
    policy: str = "none",
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    policy_options: Mapping[str, Any] | None = None,
    colour_stats: Mapping[str, Any] | None = None,
) -> keras.Model:
    """The full trainable model: uint8 images in, logits (batch, 57) out.

    ``colour_stats``: the training data's RGB statistics (harness.models.augment.colour_pca) for policies
    that use them (PCA colour noise); other policies ignore them.
    """
    from harness.models.layers import Standardize  # deferred: Keras

    trunk = MODELS.create(name, (crop_size, crop_size, 3), **dict(options or {}))
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="to_unit")(inputs)
    x = augment.create(policy, crop_size, seed=seed, colour_stats=colour_stats, options=policy_options)(x)
    x = Standardize(name="standardize")(x)
    # float32 heads: under mixed precision the logits (and so the loss) stay in float32
    logits = layers.Dense(LOGITS, name="heads", dtype="float32")(trunk(x))
    return keras.Model(inputs, logits, name=name)


def build_sizes(name: str) -> dict[str, int]:
    """``image_size`` and ``crop_size`` a variant is designed for (and its stated count is for)."""
    return {"image_size": 64, "crop_size": 54, **BUILD_SIZES.get(name, {})}


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


_NORMS = ("subtractive", "batch")


def _goodfellow(input_shape, *, norm: str, dropout: float, conv_dropout: float, name: str) -> keras.Model:
    """Goodfellow et al. 2014: 8 conv (maxout first) -> locally connected -> 2 fully connected."""
    if norm not in _NORMS:
        raise ValueError(f"model '{name}': norm must be one of {_NORMS}, not {norm!r}")
    from harness.models.layers import (  # deferred: Keras
        LocallyConnected2D,
        Maxout,
        MaxPooling2x2,
        PatchConv2D,
        SubtractiveNormalization,
    )

    inputs = keras.Input(tuple(input_shape), name="standardized")
    x = inputs
    for i, units in enumerate((48, 64, 128, 160, 192, 192, 192, 192)):
        tag = f"conv{i + 1}"
        if i == 0:  # maxout: 3 linear filters per unit, max over each group
            x = PatchConv2D(units * 3, 5, padding="same", name=tag)(x)
            x = Maxout(3, name=f"{tag}_maxout")(x)
        else:
            x = PatchConv2D(units, 5, padding="same", activation="relu", name=tag)(x)
        # Strides 2, 1, 2, 1, ...: 'same' padding keeps stride-1 pooling from shrinking the map.
        x = MaxPooling2x2(strides=2 if i % 2 == 0 else 1, name=f"{tag}_pool")(x)
        if norm == "subtractive":
            x = SubtractiveNormalization(3, name=f"{tag}_subnorm")(x)
        else:
            x = layers.BatchNormalization(name=f"{tag}_bn")(x)
        x = layers.Dropout(conv_dropout, name=f"{tag}_dropout")(x)
    x = LocallyConnected2D(192, 3, padding="same", activation="relu", name="local")(x)
    x = layers.Dropout(dropout, name="local_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(3072, activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inputs, x, name=name)


def _report(input_shape, *, dropout: float, name: str) -> keras.Model:
    """The report's conv-only variant: BN-ReLU convs, no stride-1 pooling, convs instead of FC layers."""
    inputs = keras.Input(tuple(input_shape), name="standardized")
    x = inputs
    # (filters, kernel, pooling after it or None)
    plan = [(48, 5, "max"), (64, 5, None), (128, 5, "max"), (160, 5, None), (192, 3, "avg"), (192, 3, "avg")]
    for i, (filters, kernel, pool) in enumerate(plan):
        tag = f"block{i + 1}"
        x = _conv_bn(x, filters, kernel, name=tag)
        if pool:
            pooling = layers.MaxPooling2D if pool == "max" else layers.AveragePooling2D
            x = pooling(2, strides=2, padding="same", name=f"{tag}_{pool}pool")(x)
            x = layers.Dropout(dropout, name=f"{tag}_dropout")(x)
    # The fully connected layers as convolutions: one over the whole remaining map ('valid' -> 1x1),
    # then a 1x1.
    x = _conv_bn_valid(x, 1024, (x.shape[1], x.shape[2]), name="fc_conv1")
    x = _conv_bn_valid(x, 1024, 1, name="fc_conv2")
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name=name)


def _conv_bn_valid(x, filters: int, kernel, name: str):
    from harness.models.layers import WholeMapConv2D  # deferred: Keras

    x = WholeMapConv2D(filters, kernel, padding="valid", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, filters: int, stride: int, name: str):
    """ResNet's basic block: two 3x3 conv-BN, ReLU between and after the sum; a 1x1 conv-BN
    projection on the shortcut when the shape changes (He et al. 2016, option B)."""
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu2")(y)


def _resnet(input_shape, *, stem: int, widths: Sequence[int], blocks: Sequence[int], dense: int, dropout: float,
            name: str) -> keras.Model:
    """3x3 stem, stages of basic blocks (each stage halves the map), then flatten -> dense: flattening
    rather than global pooling keeps where each feature is, which tells the digit positions apart."""
    inputs = keras.Input(tuple(input_shape), name="standardized")
    x = _conv_bn(inputs, stem, 3, name="stem")
    for s, (filters, count) in enumerate(zip(widths, blocks)):
        for b in range(count):
            x = _basic_block(x, filters, 2 if b == 0 else 1, name=f"stage{s + 1}_block{b + 1}")
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


@MODELS.register
def cnn_medium(input_shape, *, dropout: float = 0.3):
    """A mid-sized CNN (widths 32-64-128-192, hidden 512): twice cnn_small's widths, still CPU-trainable.

    Parameters: 3,886,105
    """
    return _plain_cnn(input_shape, (32, 64, 128, 192), 512, dropout, "cnn_medium")


@MODELS.register
def cnn_large(input_shape, *, dropout: float = 0.3):
    """cnn_medium at one and a half times its widths (48-96-192-288, hidden 768): twice its FLOPs (193
    against 92 MFLOPs per image), for more capacity where a CPU must still train it.

    Parameters: 8,718,345
    """
    return _plain_cnn(input_shape, (48, 96, 192, 288), 768, dropout, "cnn_large")


@MODELS.register
def goodfellow2014(input_shape, *, norm: str = "subtractive", dropout: float = 0.5, conv_dropout: float = 0.2):
    """Goodfellow et al. 2014: eight 5x5 conv layers (maxout first), one locally connected, two FC 3072.

    Input 54x54 (the paper: random 54x54 crops of 64x64 images). Every conv is 5x5 'same'; the first
    is maxout (144 linear filters, max over groups of 3 -> 48 units), the rest ReLU. After each conv:
    2x2 max pooling, 'same' padding, strides alternating 2, 1, 2, 1, ...; then normalisation and
    dropout. Choices where the paper is silent:

    - ``norm="subtractive"`` (the paper): subtract each channel's 3x3 local mean (no weights);
      ``norm="batch"``: BatchNormalization in the same place (+4 x channels parameters per layer).
    - Locally connected layer: 192 units per location, 3x3 kernel, zero padding 1 (output 4x4 =
      input size), unshared weights and bias, ReLU.
    - Dropout on every hidden layer, as in the paper: ``dropout=0.5`` (the paper's usual rate) after
      the locally and fully connected layers; ``conv_dropout=0.2`` after each conv layer (a judgement,
      not yet measured here: the paper gives no conv rate, and 0.5 on every conv map is usually too
      strong).

    | layer                                   | output     | parameters |
    |-----------------------------------------|------------|-----------:|
    | conv1 5x5, 144 filters + maxout(3)      | 54x54x48   |     10,944 |
    | pool s2                                 | 27x27x48   |          0 |
    | conv2 5x5, 64, pool s1                  | 27x27x64   |     76,864 |
    | conv3 5x5, 128, pool s2                 | 14x14x128  |    204,928 |
    | conv4 5x5, 160, pool s1                 | 14x14x160  |    512,160 |
    | conv5 5x5, 192, pool s2                 | 7x7x192    |    768,192 |
    | conv6 5x5, 192, pool s1                 | 7x7x192    |    921,792 |
    | conv7 5x5, 192, pool s2                 | 4x4x192    |    921,792 |
    | conv8 5x5, 192, pool s1                 | 4x4x192    |    921,792 |
    | locally connected 3x3 pad 1, 192        | 4x4x192    |  5,311,488 |
    | flatten                                 | 3072       |          0 |
    | fc1, 3072                               | 3072       |  9,440,256 |
    | fc2, 3072                               | 3072       |  9,440,256 |
    | heads (build_model), 57                 | 57         |    175,161 |

    (conv: 5*5*in*out + out; locally connected: 16 locations x (3*3*192*192 + 192).)
    With ``norm="batch"`` add 4 x (48+64+128+160+4*192) = 4,672.

    Parameters: 28,705,625
    """
    return _goodfellow(input_shape, norm=norm, dropout=dropout, conv_dropout=conv_dropout, name="goodfellow2014")


@MODELS.register
def report2016(input_shape, *, dropout: float = 0.3):
    """The report's conv-only variant: BN-ReLU convs, no stride-1 pooling, convs instead of FC layers.

    Input: 64x64. Expects ``augment.crop_size: 64`` with ``data.image_size: 74`` (the report's 74x74
    -> random 64x64 crops); its stated parameter count is for
    ``build_model("report2016", image_size=74, crop_size=64)`` (see BUILD_SIZES). It also builds at
    54x54 with the same count ('same' pooling gives a 4x4 map either way).

    From the report: ReLU only; 5x5 then 3x3 convolutions; max pooling after 5x5 convs, average
    pooling after the 3x3 ones; every pooling has stride 2 (none with stride 1); batch normalisation
    after every conv (conv without bias -> BN -> ReLU); dropout (0.3) only after pooled layers; the
    two fully connected layers replaced by two conv layers. Choices where the report is silent:
    widths 48-64-128-160 (5x5) and 192-192 (3x3), as Goodfellow's first layers; 2x2 pooling after
    5x5 convs 1 and 3 only (pooling after all six would leave 1x1 before the "FC" convs); the first
    FC-replacing conv spans the whole remaining map ('valid', 4x4 -> 1x1) with 1024 units, the second
    is a 1x1 conv with 1024 units.

    | layer                                   | output     | parameters |
    |-----------------------------------------|------------|-----------:|
    | block1 5x5, 48 + maxpool s2, dropout    | 32x32x48   |      3,792 |
    | block2 5x5, 64                          | 32x32x64   |     77,056 |
    | block3 5x5, 128 + maxpool s2, dropout   | 16x16x128  |    205,312 |
    | block4 5x5, 160                         | 16x16x160  |    512,640 |
    | block5 3x3, 192 + avgpool s2, dropout   | 8x8x192    |    277,248 |
    | block6 3x3, 192 + avgpool s2, dropout   | 4x4x192    |    332,544 |
    | fc_conv1 4x4 valid, 1024                | 1x1x1024   |  3,149,824 |
    | fc_conv2 1x1, 1024                      | 1x1x1024   |  1,052,672 |
    | flatten                                 | 1024       |          0 |
    | heads (build_model), 57                 | 57         |     58,425 |

    (each block: k*k*in*out conv weights + 4*out BN parameters, 2*out of them non-trainable.)

    Parameters: 5,669,513
    """
    return _report(input_shape, dropout=dropout, name="report2016")


@MODELS.register
def stn_report2016(input_shape, *, dropout: float = 0.3):
    """``report2016`` behind a spatial transformer (Jaderberg et al. 2015, 96.4% on SVHN with one in front
    of their trunk): a small localisation net reads the standardized crop and predicts one affine map
    per image, the crop is resampled through it (harness.models.layers.AffineSampler, bilinear), and
    the report's trunk, unchanged (a nested ``report2016`` model), reads the result. The last layer of
    the localisation net starts at zero weights and the identity's bias, so training starts from the
    plain trunk's view and learns to zoom, shift, rotate or shear it; ``train.init_from`` a ``report2016``
    model copies its weights and so starts as that model (harness.training.setup.IDENTITY_AT_START). Sizes
    as ``report2016`` (BUILD_SIZES: 74x74 images, 64x64 crops).

    | layer                                   | output     | parameters |
    |-----------------------------------------|------------|-----------:|
    | stn_pool0 2x2 max                       | 32x32x3    |          0 |
    | stn_conv1 5x5, 32, ReLU + 2x2 max       | 16x16x32   |      2,432 |
    | stn_conv2 5x5, 32, ReLU + 2x2 max       | 8x8x32     |     25,632 |
    | stn_fc1 32, ReLU; stn_fc2 32, ReLU      | 32         |     66,624 |
    | stn_theta 6 (zeros, identity bias)      | 6          |        198 |
    | stn_sampler (affine, bilinear)          | 64x64x3    |          0 |
    | report2016 trunk + heads                | 57         |  5,669,513 |

    Parameters: 5,764,399
    """
    inputs = keras.Input(tuple(input_shape), name="standardized")
    x = layers.MaxPooling2D(2, name="stn_pool0")(inputs)
    for i in (1, 2):
        x = layers.Conv2D(32, 5, padding="same", activation="relu", name=f"stn_conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"stn_pool{i}")(x)
    x = layers.Flatten(name="stn_flatten")(x)
    x = layers.Dense(32, activation="relu", name="stn_fc1")(x)
    x = layers.Dense(32, activation="relu", name="stn_fc2")(x)
    theta = layers.Dense(6, name="stn_theta", kernel_initializer="zeros", dtype="float32",
                         bias_initializer=keras.initializers.Constant([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))(x)
    from harness.models.layers import AffineSampler  # deferred: Keras

    sampled = AffineSampler(name="stn_sampler")([inputs, theta])
    features = _report(input_shape, dropout=dropout, name="report2016")(sampled)
    return keras.Model(inputs, features, name="stn_report2016")


@MODELS.register
def resnet18(input_shape, *, dropout: float = 0.3):
    """A modern baseline: a ResNet-18 trunk (basic blocks 2-2-2-2, widths 64-128-256-512, BN).

    He et al. 2016's ResNet-18, sized for 54x54 street-number crops: a 3x3 stride-1 stem instead of
    the 7x7 stride-2 conv and max pooling (made for 224x224 ImageNet images), and every stage halving
    the map (54 -> 27 -> 14 -> 7 -> 4), so the last stage still sees a 4x4 grid. Projection shortcuts
    (1x1 conv + BN) where the shape changes. The 4x4x512 map is flattened, not globally pooled (the
    digit heads need to know where each feature is), then one hidden layer of 1024 with dropout
    (0.3) before and after it, as the FC layers of the paper's model. About 1 GFLOP per image, like
    goodfellow2014 (1.2), with no dropout inside the trunk: batch normalisation regularises it.

    | layer                                   | output     | parameters |
    |-----------------------------------------|------------|-----------:|
    | stem 3x3, 64, BN-ReLU                   | 54x54x64   |      1,984 |
    | stage1: 2 blocks, 64 (first stride 2)   | 27x27x64   |    152,832 |
    | stage2: 2 blocks, 128 (first stride 2)  | 14x14x128  |    526,848 |
    | stage3: 2 blocks, 256 (first stride 2)  | 7x7x256    |  2,102,272 |
    | stage4: 2 blocks, 512 (first stride 2)  | 4x4x512    |  8,398,848 |
    | flatten, dropout                        | 8192       |          0 |
    | hidden 1024, ReLU, dropout              | 1024       |  8,389,632 |
    | heads (build_model), 57                 | 57         |     58,425 |

    (conv weights without bias + 4 x channels per BN, 2 x channels of them non-trainable; the first
    block of every stage has a 1x1 projection shortcut.)

    Parameters: 19,630,841
    """
    return _resnet(input_shape, stem=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), dense=1024,
                   dropout=dropout, name="resnet18")
