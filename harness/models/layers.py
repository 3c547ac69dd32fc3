"""Layers the paper's architecture needs and Keras 3 does not ship.

All are written with keras.ops only, so they run on the TensorFlow, JAX and PyTorch backends, and are
registered for safe-mode loading (harness.evaluation.loading.load_model). PatchConv2D's measured choice of
formulation (conv_choice) times through JAX itself, the one backend where it applies.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from harness import atomic
from harness.backend import backend_name, device_name, load_keras
from harness.errors import HarnessError

keras = load_keras()
ops = keras.ops


@keras.saving.register_keras_serializable(package="harness")
class Maxout(keras.layers.Layer):
    """Maxout over the channel axis: channel ``u * pieces + p`` belongs to unit ``u``; out = max over p.

    Put it after a layer with ``units * pieces`` channels (Goodfellow et al. 2013, 2014).
    """

    def __init__(self, pieces: int, **kwargs):
        super().__init__(**kwargs)
        self.pieces = int(pieces)

    def call(self, inputs):
        channels = inputs.shape[-1]
        if channels % self.pieces:
            raise ValueError(f"Maxout: {channels} channels are not a multiple of pieces={self.pieces}")
        if not _xla():
            shape = tuple(-1 if d is None else d for d in (None, *inputs.shape[1:-1]))
            return ops.max(ops.reshape(inputs, (*shape, channels // self.pieces, self.pieces)), axis=-1)
        # Under XLA, the maximum of `pieces` strided slices: XLA ran the max over a reshaped minor axis
        # of size `pieces` (and its gradient) 1.6x slower on a CPU (benchmarks/layer_speed.py).
        out = inputs[..., 0::self.pieces]
        for p in range(1, self.pieces):
            out = ops.maximum(out, inputs[..., p::self.pieces])
        return out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // self.pieces)

    def get_config(self):
        return {**super().get_config(), "pieces": self.pieces}


_FORMULATION: list[bool] = []  # set by formulation(): the choice in force while a model is traced


def _xla() -> bool:
    """Whether steps are compiled by XLA here: the JAX backend (harness.training.core always jit-compiles on it).

    The layers below then use formulations XLA compiles well (slices, reshapes, matmuls); on TensorFlow
    and PyTorch, whose own kernels (oneDNN, cuDNN) run the plain operations faster, they use those.
    Both give the same outputs (tests/test_models.py); benchmarks/layer_speed.py measures the two."""
    return _FORMULATION[-1] if _FORMULATION else backend_name() == "jax"


@contextlib.contextmanager
def formulation(xla: bool):
    """Within the block, layers traced take the XLA formulations (True) or the plain ones (False),
    whatever the backend: for comparing the two on one backend (tests, benchmarks/layer_speed.py).
    The choice is made when a layer's call is traced, so build, compile and run the first step inside."""
    _FORMULATION.append(bool(xla))
    try:
        yield
    finally:
        _FORMULATION.pop()


def _cpu() -> bool:
    return device_name().startswith("CPU")


def _window_counts(length: int, half: int) -> np.ndarray:
    """How many of the positions i - half .. i + half lie inside 0 .. length - 1, for each i."""
    index = np.arange(length)
    return (np.minimum(index + half, length - 1) - np.maximum(index - half, 0) + 1).astype("float32")


@keras.saving.register_keras_serializable(package="harness")
class SubtractiveNormalization(keras.layers.Layer):
    """Subtract each channel's local ``size x size`` mean (the paper's subtractive normalisation).

    The mean is taken per channel over the window, counting only positions inside the image (the
    border is not pulled towards zero), so a constant region maps to exactly zero. No weights.
    """

    def __init__(self, size: int = 3, **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1 or int(size) % 2 == 0:
            raise ValueError(f"SubtractiveNormalization: size must be a positive odd number, not {size!r}")
        self.size = int(size)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError("SubtractiveNormalization needs a known height and width")
        # The in-image positions in each window: a constant known from the static shape.
        half = self.size // 2
        inverse = 1.0 / (_window_counts(height, half)[:, None] * _window_counts(width, half)[None, :])
        inverse = ops.cast(inverse[None, :, :, None], inputs.dtype)
        if not _xla():  # box sums by a depthwise all-ones convolution
            kernel = ops.ones((self.size, self.size, inputs.shape[-1], 1), dtype=inputs.dtype)
            return inputs - ops.depthwise_conv(inputs, kernel, strides=1, padding="same") * inverse
        # Under XLA, a separable box sum (shifted slices added along rows, then along columns; zeros
        # outside the image): XLA ran the depthwise convolution and its gradient 8-12x slower on a CPU
        # (benchmarks/layer_speed.py).
        padded = ops.pad(inputs, ((0, 0), (half, half), (0, 0), (0, 0)))
        rows = padded[:, 0:height]
        for i in range(1, self.size):
            rows = rows + padded[:, i:i + height]
        padded = ops.pad(rows, ((0, 0), (0, 0), (half, half), (0, 0)))
        sums = padded[:, :, 0:width]
        for j in range(1, self.size):
            sums = sums + padded[:, :, j:j + width]
        return inputs - sums * inverse

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="harness")
class LocallyConnected2D(keras.layers.Layer):
    """A 2D convolution with UNSHARED weights: every output location has its own kernel and bias.

    Stride 1, ``padding`` "same" (zero padding, output size = input size; odd kernels) or "valid".
    Weights: kernel (out_h * out_w, k * k * in_channels, filters), bias (out_h * out_w, filters);
    a patch's features are ordered (row offset, column offset, channel).

    Call cost is k*k slices to build the patches (a trace-time loop over kernel offsets, not over
    locations) and one batched einsum over locations.
    """

    def __init__(self, filters: int, kernel_size: int = 3, padding: str = "same", activation=None,
                 use_bias: bool = True, kernel_initializer=None, bias_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        if padding not in ("same", "valid"):
            raise ValueError(f"LocallyConnected2D: padding must be 'same' or 'valid', not {padding!r}")
        if padding == "same" and kernel_size % 2 == 0:
            raise ValueError("LocallyConnected2D: 'same' padding needs an odd kernel_size")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        # None: Glorot uniform with a conv layer's fans (k*k*in, k*k*filters). Keras' own fan rule
        # would multiply by the number of locations for this 3D kernel and start far too small.
        self.kernel_initializer = None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _out_hw(self, height: int, width: int) -> tuple[int, int]:
        if self.padding == "same":
            return height, width
        return height - self.kernel_size + 1, width - self.kernel_size + 1

    def build(self, input_shape):
        height, width, channels = input_shape[1:]
        if height is None or width is None or channels is None:
            raise ValueError("LocallyConnected2D needs a fully known input shape (height, width, channels)")
        out_h, out_w = self._out_hw(height, width)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"LocallyConnected2D: input {height}x{width} is smaller than the kernel")
        k = self.kernel_size
        initializer = self.kernel_initializer
        if initializer is None:
            limit = (6.0 / (k * k * channels + k * k * self.filters)) ** 0.5
            initializer = keras.initializers.RandomUniform(-limit, limit)
        self.kernel = self.add_weight(
            name="kernel", shape=(out_h * out_w, k * k * channels, self.filters), initializer=initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(out_h * out_w, self.filters), initializer=self.bias_initializer)
            if self.use_bias else None
        )

    def _patches(self, inputs):
        k = self.kernel_size
        height, width = inputs.shape[1], inputs.shape[2]
        out_h, out_w = self._out_hw(height, width)
        if self.padding == "same":
            p = k // 2
            inputs = ops.pad(inputs, ((0, 0), (p, p), (p, p), (0, 0)))
        slices = [inputs[:, i:i + out_h, j:j + out_w, :] for i in range(k) for j in range(k)]
        return ops.concatenate(slices, axis=-1)  # (batch, out_h, out_w, k*k*channels)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        out_h, out_w = self._out_hw(height, width)
        patches = self._patches(inputs)
        patches = ops.reshape(patches, (-1, out_h * out_w, patches.shape[-1]))
        out = ops.einsum("bpk,pkf->bpf", patches, self.kernel)
        if self.use_bias:
            out = out + self.bias
        out = ops.reshape(out, (-1, out_h, out_w, self.filters))
        return self.activation(out)

    def compute_output_shape(self, input_shape):
        out_h, out_w = self._out_hw(input_shape[1], input_shape[2])
        return (input_shape[0], out_h, out_w, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "padding": self.padding,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": (
                None if self.kernel_initializer is None else keras.initializers.serialize(self.kernel_initializer)
            ),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="harness")
class MaxPooling2x2(keras.layers.MaxPooling2D):
    """keras.layers.MaxPooling2D with a 2x2 window, 'same' padding and stride 1 or 2, channels last.

    The same outputs as the Keras layer (its config: ``strides`` only). Under XLA (the JAX backend) it computes them as
    elementwise maxima of shifted slices (stride 1) or as a max over a (h/2, 2, w/2, 2) reshape
    (stride 2), the missing row or column at the bottom/right padded with -inf as 'same' pooling
    does: XLA ran the Keras layer's windowed reduction and its gradient 4-9x slower on a CPU
    (benchmarks/layer_speed.py). Elsewhere it is the Keras layer.
    """

    def __init__(self, strides: int = 2, **kwargs):
        super().__init__(pool_size=2, strides=strides, padding="same", **kwargs)
        if self.strides not in ((1, 1), (2, 2)):
            raise ValueError(f"MaxPooling2x2: strides must be 1 or 2, not {strides!r}")
        if self.data_format != "channels_last":
            raise ValueError("MaxPooling2x2: channels_last only")

    def call(self, inputs):
        if not _xla():
            return super().call(inputs)
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError("MaxPooling2x2 needs a known height and width")
        if self.strides == (1, 1):
            padded = ops.pad(inputs, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=float("-inf"))
            rows = ops.maximum(padded[:, :height], padded[:, 1:])
            return ops.maximum(rows[:, :, :width], rows[:, :, 1:])
        out_h, out_w = -(-height // 2), -(-width // 2)
        if (out_h * 2, out_w * 2) != (height, width):
            inputs = ops.pad(inputs, ((0, 0), (0, out_h * 2 - height), (0, out_w * 2 - width), (0, 0)),
                             constant_values=float("-inf"))
        grouped = ops.reshape(inputs, (-1, out_h, 2, out_w, 2, inputs.shape[-1]))
        return ops.max(grouped, axis=(2, 4))

    def get_config(self):
        config = super().get_config()
        config["strides"] = self.strides[0]
        for key in ("pool_size", "padding"):
            config.pop(key, None)
        return config


@keras.saving.register_keras_serializable(package="harness")
class PatchConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (same weights, config and outputs) that, under XLA (the JAX backend), runs
    a stride-1 convolution as patches x one matmul where that is faster than XLA's own convolution.

    Which is faster depends on the shape and the device (on a 2-core CPU at batch 32 the patches won
    on goodfellow2014's conv1, conv3 and conv8 by 2.5-8x and lost on conv2, conv4, conv6 and conv7 by
    1.3-1.5x: benchmarks/conv_parts.py), so it is measured: the first time a shape is compiled on a
    device, both are timed forward and backward (harness.models.layers.conv_choice) and the faster kept, in
    memory and in a file per device, so later runs there (a resumed one included) make the same
    choice without timing again. Within ``formulation(True)`` the patches are used unmeasured, within
    ``formulation(False)`` and on TensorFlow and PyTorch (whose own convolution kernels are as fast or
    faster) the Keras layer. Stride 1, no dilation or groups, channels last; elsewhere the ordinary
    convolution.
    """

    def _patch_applies(self, inputs) -> bool:
        """Whether the patch formulation can compute this convolution of ``inputs``."""
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        if (not _xla() or None in (height, width, channels) or self.strides != (1, 1)
                or self.dilation_rate != (1, 1) or self.groups != 1 or self.data_format != "channels_last"):
            return False
        kh, kw = self.kernel_size
        return self.padding == "same" or (height >= kh and width >= kw)

    def _patches(self, inputs) -> bool:
        """Whether this call runs as patches x matmul: it applies, and is chosen or measured faster."""
        if not self._patch_applies(inputs):
            return False
        batch = inputs.shape[0]
        # a symbolic build (any batch size: the outputs are the same), another backend within
        # formulation(True), or the patches chosen by formulation(True): no measurement
        if _FORMULATION or backend_name() != "jax" or not isinstance(batch, int):
            return True
        return conv_choice(batch, tuple(inputs.shape[1:]), self.kernel_size, self.filters, self.padding,
                           keras.backend.standardize_dtype(inputs.dtype)) == "patches"

    def convolution_op(self, inputs, kernel):
        if not self._patches(inputs):
            return super().convolution_op(inputs, kernel)
        patches = conv_patches(inputs, self.kernel_size, self.padding)
        return ops.matmul(patches, ops.reshape(kernel, (-1, self.filters)))


@keras.saving.register_keras_serializable(package="harness")
class WholeMapConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (same weights, config and outputs) for a 'valid' convolution whose kernel
    spans its whole input map (a fully connected layer written as a convolution: 4x4x192 -> 1x1x1024 in
    ``report2016``): it runs as the flattened map x the reshaped kernel, one matmul.

    The same product as the convolution, but TensorFlow's CPU kernels compute its input gradient as a
    convolution too, slowly enough to take a third of a ``report2016`` training step on a 2-core CPU
    (benchmarks/whole_map_conv.py times the layer and the model both ways; figures in docs/performance.md).
    Elsewhere (stride or dilation other than 1, groups, channels first, a kernel smaller than the map)
    the ordinary convolution.
    """

    def _whole_map(self, inputs) -> bool:
        return (tuple(inputs.shape[1:3]) == tuple(self.kernel_size) and self.padding == "valid"
                and self.strides == (1, 1) and self.dilation_rate == (1, 1) and self.groups == 1
                and self.data_format == "channels_last")

    def convolution_op(self, inputs, kernel):
        if not self._whole_map(inputs):
            return super().convolution_op(inputs, kernel)
        flat = ops.reshape(inputs, (-1, math.prod(inputs.shape[1:])))
        out = ops.matmul(flat, ops.reshape(kernel, (-1, self.filters)))
        return ops.reshape(out, (-1, 1, 1, self.filters))


# ------------------------------------------------------------- the measured choice of formulation

CHOICE_BATCH_CPU = 32  # a CPU times a convolution at most at this batch size (the choice holds above it)
CHOICE_MARGIN = 0.95  # XLA's convolution is chosen only when it takes less than this share of the patches' time
CHOICE_ROUNDS = 3  # timed calls of each formulation (alternating), the best of each kept

_CHOICES: dict[str, dict] = {}  # this process's choices: key -> {"choice", "patches_ms", "xla_ms"}
_CHOICES_LOADED: list[Path] = []  # the choices files read into _CHOICES
_TIMED: list[bool] = []  # whether this process has said that it measures


def choices_file() -> Path:
    """The file that keeps this device's measured choices: one per device and JAX version, under
    ``$XDG_CACHE_HOME/svhn-harness`` (``~/.cache/svhn-harness`` by default). Deleting it makes the
    next run measure again."""
    import re

    import jax

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "svhn-harness"
    device = f"{device_name()} jax-{jax.__version__}"
    return base / f"conv-choice-{re.sub(r'[^A-Za-z0-9.]+', '-', device).strip('-').lower()}.json"


def conv_choice(batch: int, shape: tuple[int, int, int], kernel_size: tuple[int, int], filters: int,
                padding: str, dtype: str) -> str:
    """"patches" or "xla": the faster formulation, on this device, of a stride-1 convolution of a
    (batch, *shape) channels-last input with ``filters`` kernels of ``kernel_size``, forward and both
    gradients. Measured once (JAX only), then read from memory or choices_file(). On a CPU the
    measurement uses at most CHOICE_BATCH_CPU examples; XLA's convolution has to be faster by
    1 - CHOICE_MARGIN, so that noise does not flip the choice of near ties."""
    if _cpu():
        batch = min(batch, CHOICE_BATCH_CPU)
    key = f"{'x'.join(map(str, shape))} k{kernel_size[0]}x{kernel_size[1]} f{filters} {padding} {dtype} b{batch}"
    path = choices_file()
    if path not in _CHOICES_LOADED:
        _CHOICES.update(_read_choices(path))
        _CHOICES_LOADED.append(path)
    if key not in _CHOICES:
        patches_ms, xla_ms = _time_formulations(batch, shape, kernel_size, filters, padding, dtype)
        choice = "xla" if xla_ms < CHOICE_MARGIN * patches_ms else "patches"
        _CHOICES[key] = {"choice": choice, "patches_ms": round(patches_ms, 3), "xla_ms": round(xla_ms, 3)}
        stored = _read_choices(path)  # another process may have added its own since
        stored[key] = _CHOICES[key]
        try:
            atomic.write_text(path, json.dumps(stored, indent=1, sort_keys=True) + "\n")
        except HarnessError:  # a read-only home: the choice holds for this process
            pass
    return _CHOICES[key]["choice"]


def _read_choices(path: Path) -> dict[str, dict]:
    """The choices kept in ``path``; none when it is missing or unreadable (it is only a cache: what is
    missing is measured again and the file rewritten)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items()
            if isinstance(v, dict) and v.get("choice") in ("patches", "xla")}


def _time_formulations(batch: int, shape: tuple[int, int, int], kernel_size: tuple[int, int], filters: int,
                       padding: str, dtype: str) -> tuple[float, float]:
    """Milliseconds of the patches and of XLA's convolution, forward and both gradients, jitted, on a
    fixed random batch: the best of CHOICE_ROUNDS alternating calls after one compiling call each."""
    import jax

    if not _TIMED:
        _TIMED.append(True)
        print(f"harness: timing the patch and XLA formulations of each convolution on this device, once "
              f"(kept in {choices_file()})", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    kh, kw = kernel_size
    height, width = shape[0], shape[1]
    out_h, out_w = (height, width) if padding == "same" else (height - kh + 1, width - kw + 1)

    def patches(kernel, x):
        return ops.matmul(conv_patches(x, kernel_size, padding), ops.reshape(kernel, (-1, filters)))

    def xla(kernel, x):
        return ops.conv(x, kernel, strides=1, padding=padding)

    # Called while a model's step is traced: without this, JAX would stage the timing calls into that
    # step instead of running them now.
    with jax.ensure_compile_time_eval():
        x = ops.convert_to_tensor(rng.normal(size=(batch, *shape)), dtype)
        kernel = ops.convert_to_tensor(rng.normal(size=(kh, kw, shape[2], filters)) * 0.05, dtype)
        dy = ops.convert_to_tensor(rng.normal(size=(batch, out_h, out_w, filters)), "float32")

        def backward(conv):  # forward and both gradients of <conv(kernel, x), dy>
            return jax.jit(jax.grad(lambda k, x: ops.sum(ops.cast(conv(k, x), "float32") * dy), argnums=(0, 1)))

        steps = [backward(patches), backward(xla)]
        best = [float("inf")] * 2
        for step in steps:
            jax.block_until_ready(step(kernel, x))
        for _ in range(CHOICE_ROUNDS):
            for i, step in enumerate(steps):
                start = time.perf_counter()
                jax.block_until_ready(step(kernel, x))
                best[i] = min(best[i], 1000 * (time.perf_counter() - start))
    return best[0], best[1]


def conv_patches(inputs, kernel_size: tuple[int, int], padding: str):
    """The patches of a stride-1 convolution over channels-last ``inputs``: (batch, out_h, out_w,
    kh*kw*channels), each position's window in (row offset, column offset, channel) order, the order
    of a (kh, kw, in, out) kernel, so that patches x kernel.reshape(-1, out) is the convolution."""
    height, width = inputs.shape[1], inputs.shape[2]
    kh, kw = kernel_size
    if padding == "same":  # Keras' 'same': any odd padding goes at the bottom/right
        top, left = (kh - 1) // 2, (kw - 1) // 2
        inputs = ops.pad(inputs, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
        out_h, out_w = height, width
    else:
        out_h, out_w = height - kh + 1, width - kw + 1
    return ops.concatenate([inputs[:, i:i + out_h, j:j + out_w, :] for i in range(kh) for j in range(kw)], axis=-1)


# ------------------------------------------------------------------ augmentation (models.augment's policies)


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


@keras.saving.register_keras_serializable(package="harness")
class AffineSampler(keras.layers.Layer):
    """The sampler of a spatial transformer (Jaderberg et al. 2015): images (B, H, W, C) read through one
    affine map per example, ``theta`` (B, 6) = [a, b, tx, c, d, ty], in coordinates that run from -1 to 1
    across the image: output pixel (x, y) comes from (a x + b y + tx, c x + d y + ty), bilinear, the
    nearest edge pixel where that falls outside. [1, 0, 0, 0, 1, 0] is the identity."""

    def call(self, inputs):
        images, theta = inputs
        height, width = images.shape[1], images.shape[2]
        t = ops.reshape(ops.cast(theta, "float32"), (-1, 6, 1, 1))
        y = ops.linspace(-1.0, 1.0, height)[None, :, None]
        x = ops.linspace(-1.0, 1.0, width)[None, None, :]
        cols = (t[:, 0] * x + t[:, 1] * y + t[:, 2] + 1.0) * ((width - 1) / 2)
        rows = (t[:, 3] * x + t[:, 4] * y + t[:, 5] + 1.0) * ((height - 1) / 2)
        rows, cols = ops.clip(rows, 0.0, height - 1.0), ops.clip(cols, 0.0, width - 1.0)
        return _sample_bilinear(images, rows, cols)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


# ------------------------------------------------------------------ the model's input standardization

@keras.saving.register_keras_serializable(package="harness")
class Standardize(keras.layers.Layer):
    """Per-image zero mean and unit variance: street numbers vary wildly in brightness and contrast."""

    def call(self, images):
        mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
        std = ops.std(images, axis=(1, 2, 3), keepdims=True)
        return (images - mean) / ops.maximum(std, 1e-3)
