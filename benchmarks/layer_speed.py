"""Forward + backward time of goodfellow2014's own layers against their plain formulations.

    python benchmarks/layer_speed.py [--batch 16] [--steps 5] [--warmup 2] [--jit auto]

For each layer shape of ``goodfellow2014`` where the harness writes a layer its own way
(harness.layers: Maxout as maxima of strided slices, SubtractiveNormalization as a separable box sum,
MaxPooling2x2 as slice maxima / a reshape max, PatchConv2D as patches x one matmul on small maps), a
one-layer model is trained with ``train_on_batch`` (forward, a mean-squared loss, the gradient, an SGD
update; compiled as `harness train` compiles: ``--jit auto`` is harness.train's rule) on a fixed
random batch, against the same model with the plain formulation in the layer's place: Keras' own
Conv2D and MaxPooling2D, a reshape + max over the pieces axis for maxout, and a depthwise all-ones
convolution for the box sum. The two give the same outputs (tests/test_models.py). A per-channel scale
in front of every layer gives weightless layers a gradient to compute. Printed: milliseconds per
step for each, and plain / harness (above 1: the harness's layer is faster), measured in the same
run on the current backend (KERAS_BACKEND). Figures only, no assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backend import backend_name, device_name, load_keras  # noqa: E402

keras = load_keras()
ops = keras.ops

from harness.layers import Maxout, MaxPooling2x2, PatchConv2D, SubtractiveNormalization  # noqa: E402
from harness.train import _jit  # noqa: E402


class ChannelScale(keras.layers.Layer):
    """x * w, one trainable weight per channel: gives a weightless layer behind it a gradient."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.scale


class ReshapeMaxout(keras.layers.Layer):
    """Maxout as a max over a reshaped pieces axis (the plain formulation)."""

    def __init__(self, pieces: int, **kwargs):
        super().__init__(**kwargs)
        self.pieces = pieces

    def call(self, inputs):
        *_, h, w, c = inputs.shape
        return ops.max(ops.reshape(inputs, (-1, h, w, c // self.pieces, self.pieces)), axis=-1)


class DepthwiseBoxNormalization(keras.layers.Layer):
    """Subtractive normalisation with the box sums and in-image counts as depthwise all-ones
    convolutions (the plain formulation)."""

    def __init__(self, size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def call(self, inputs):
        kernel = ops.ones((self.size, self.size, inputs.shape[-1], 1), dtype=inputs.dtype)
        sums = ops.depthwise_conv(inputs, kernel, strides=1, padding="same")
        counts = ops.depthwise_conv(ops.ones_like(inputs[:1, :, :, :1]), kernel[:, :, :1], strides=1, padding="same")
        return inputs - sums / counts


# (what, input shape, the harness's layer, the plain layer): goodfellow2014 at 54x54
def cases() -> list[tuple[str, tuple, object, object]]:
    conv = lambda cls, filters: cls(filters, 5, padding="same", activation="relu")  # noqa: E731
    return [
        ("maxout(3)", (54, 54, 144), lambda: Maxout(3), lambda: ReshapeMaxout(3)),
        ("max pool s2", (54, 54, 48), lambda: MaxPooling2x2(strides=2),
         lambda: keras.layers.MaxPooling2D(2, strides=2, padding="same")),
        ("max pool s1", (27, 27, 64), lambda: MaxPooling2x2(strides=1),
         lambda: keras.layers.MaxPooling2D(2, strides=1, padding="same")),
        ("max pool s2", (27, 27, 128), lambda: MaxPooling2x2(strides=2),
         lambda: keras.layers.MaxPooling2D(2, strides=2, padding="same")),
        ("max pool s1", (14, 14, 160), lambda: MaxPooling2x2(strides=1),
         lambda: keras.layers.MaxPooling2D(2, strides=1, padding="same")),
        ("subtractive norm", (27, 27, 48), lambda: SubtractiveNormalization(3), lambda: DepthwiseBoxNormalization(3)),
        ("subtractive norm", (14, 14, 128), lambda: SubtractiveNormalization(3), lambda: DepthwiseBoxNormalization(3)),
        ("subtractive norm", (7, 7, 192), lambda: SubtractiveNormalization(3), lambda: DepthwiseBoxNormalization(3)),
        ("conv1 5x5 -> 144", (54, 54, 3), lambda: conv(PatchConv2D, 144), lambda: conv(keras.layers.Conv2D, 144)),
        ("conv3 5x5 -> 128 (ordinary)", (27, 27, 64), lambda: conv(PatchConv2D, 128),
         lambda: conv(keras.layers.Conv2D, 128)),
        ("conv6 5x5 -> 192", (7, 7, 192), lambda: conv(PatchConv2D, 192), lambda: conv(keras.layers.Conv2D, 192)),
        ("conv8 5x5 -> 192", (4, 4, 192), lambda: conv(PatchConv2D, 192), lambda: conv(keras.layers.Conv2D, 192)),
    ]


def step_ms(make_layer, shape: tuple, args) -> float:
    """Milliseconds per train_on_batch of ChannelScale -> the layer, on a fixed random batch."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    outputs = make_layer()(ChannelScale()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse", jit_compile=_jit(args.jit))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, *shape)).astype("float32")
    y = np.zeros((args.batch, *model.output.shape[1:]), "float32")
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / args.steps * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per figure (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first; the first compiles (default 2)")
    parser.add_argument("--jit", choices=["auto", "on", "off"], default="auto",
                        help="train.jit_compile (default auto: harness.train's rule)")
    args = parser.parse_args(argv)
    print(f"device: {device_name()}; backend: {backend_name()} (Keras {keras.__version__}); jit {_jit(args.jit)}; "
          f"batch {args.batch}; {args.steps} timed steps after {args.warmup}; Python {platform.python_version()}, "
          f"{os.cpu_count()} logical cores", flush=True)
    lines = ["| layer | input | harness ms/step | plain ms/step | plain / harness |", "|---|---|---:|---:|---:|"]
    for what, shape, ours, plain in cases():
        mine, theirs = step_ms(ours, shape, args), step_ms(plain, shape, args)
        print(f"  {what} {shape}: harness {mine:.1f} ms, plain {theirs:.1f} ms", file=sys.stderr, flush=True)
        lines.append(f"| {what} | {'x'.join(map(str, shape))} | {mine:,.1f} | {theirs:,.1f} | {theirs / mine:,.2f} |")
    print("\n".join(lines))
    if hasattr(os, "getloadavg"):  # other processes on the machine slow every figure down
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} logical cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
