"""Forward + backward time of goodfellow2014's own layers in their two formulations.

    python benchmarks/layer_speed.py [--batch 16] [--steps 5] [--warmup 2] [--jit auto]

harness/models/layers.py writes Maxout, SubtractiveNormalization, MaxPooling2x2 and PatchConv2D twice: in
formulations XLA compiles well (maxima of strided slices; a separable shifted-slice box sum; slice or
reshape maxima; patches x one matmul), taken on the JAX backend, and in the plain ones (a max over a
reshaped pieces axis; a depthwise all-ones convolution; Keras' MaxPooling2D and Conv2D), taken on
TensorFlow and PyTorch. For each goodfellow2014 layer shape, a one-layer model is trained with
``train_on_batch`` (forward, a mean-squared loss, the gradient, an SGD update; compiled as `harness
train` compiles: ``--jit auto`` is harness.training.setup's rule) on a fixed random batch, once in each
formulation (harness.models.layers.formulation), on the current backend (KERAS_BACKEND). The two give the
same outputs (tests/test_models.py). A per-channel scale in front of every layer gives weightless
layers a gradient to compute. Printed: milliseconds per step for each, and plain / XLA (above 1: the
XLA formulation is faster here), measured in the same run. Figures only, no assertions (see
DESIGN.md, benchmarks/).
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

from harness.backend import backend_name, device_name, load_keras, set_random_seed  # noqa: E402

keras = load_keras()

from harness.models.layers import (  # noqa: E402
    Maxout,
    MaxPooling2x2,
    PatchConv2D,
    SubtractiveNormalization,
    formulation,
)
from harness.training.setup import _jit  # noqa: E402


class ChannelScale(keras.layers.Layer):
    """x * w, one trainable weight per channel: gives a weightless layer behind it a gradient."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.scale


# (what, input shape, the layer): goodfellow2014 at 54x54
def cases() -> list[tuple[str, tuple, object]]:
    conv = lambda filters: lambda: PatchConv2D(filters, 5, padding="same", activation="relu")  # noqa: E731
    return [
        ("maxout(3)", (54, 54, 144), lambda: Maxout(3)),
        ("max pool s2", (54, 54, 48), lambda: MaxPooling2x2(strides=2)),
        ("max pool s1", (27, 27, 64), lambda: MaxPooling2x2(strides=1)),
        ("max pool s2", (27, 27, 128), lambda: MaxPooling2x2(strides=2)),
        ("max pool s1", (14, 14, 160), lambda: MaxPooling2x2(strides=1)),
        ("subtractive norm", (27, 27, 48), lambda: SubtractiveNormalization(3)),
        ("subtractive norm", (14, 14, 128), lambda: SubtractiveNormalization(3)),
        ("subtractive norm", (7, 7, 192), lambda: SubtractiveNormalization(3)),
        ("conv1 5x5 -> 144", (54, 54, 3), conv(144)),
        ("conv3 5x5 -> 128", (27, 27, 64), conv(128)),
        ("conv6 5x5 -> 192", (7, 7, 192), conv(192)),
        ("conv8 5x5 -> 192", (4, 4, 192), conv(192)),
    ]


def step_ms(make_layer, shape: tuple, xla: bool, args) -> float:
    """Milliseconds per train_on_batch of ChannelScale -> the layer in that formulation, on a fixed
    random batch."""
    with formulation(xla):
        return _step_ms(make_layer, shape, args)


def _step_ms(make_layer, shape: tuple, args) -> float:
    set_random_seed(0)
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
                        help="train.jit_compile (default auto: harness.training.setup's rule)")
    args = parser.parse_args(argv)
    print(f"device: {device_name()}; backend: {backend_name()} (Keras {keras.__version__}); jit {_jit(args.jit)}; "
          f"batch {args.batch}; {args.steps} timed steps after {args.warmup}; Python {platform.python_version()}, "
          f"{os.cpu_count()} logical cores", flush=True)
    lines = ["| layer | input | XLA formulation ms/step | plain ms/step | plain / XLA |", "|---|---|---:|---:|---:|"]
    for what, shape, layer in cases():
        xla, plain = step_ms(layer, shape, True, args), step_ms(layer, shape, False, args)
        print(f"  {what} {shape}: XLA formulation {xla:.1f} ms, plain {plain:.1f} ms", file=sys.stderr, flush=True)
        lines.append(f"| {what} | {'x'.join(map(str, shape))} | {xla:,.1f} | {plain:,.1f} | {plain / xla:,.2f} |")
    print("\n".join(lines))
    if hasattr(os, "getloadavg"):  # other processes on the machine slow every figure down
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} logical cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
