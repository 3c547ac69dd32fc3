"""Where goodfellow2014's 5x5 convolutions spend a training step under XLA (the JAX backend): gathering
the patches, the patch matmul, and XLA's own convolution forward and each of its gradients.

    KERAS_BACKEND=jax python benchmarks/conv_parts.py [--batch 32] [--steps 4] [--layers conv2,conv3]

Under XLA, PatchConv2D (harness/models/layers.py) runs a stride-1 convolution as patches x one matmul where
it measured that faster than XLA's convolution (harness.models.layers.conv_choice, the same fwd+bwd timing
as the two columns below; this script breaks both down). For
each 5x5 'same' convolution of goodfellow2014 at its 54x54 input (the shapes the model gives it), each
part is jitted and timed on a fixed random batch (best of --steps after one untimed, compiling call),
in milliseconds:

- patches: harness.models.layers.conv_patches alone (the 25 shifted windows gathered side by side);
- matmul: patches x the kernel alone (patches given), and its GFLOP/s;
- patch fwd+bwd: the PatchConv2D formulation, forward and both gradients (input and kernel), against a
  fixed random output gradient;
- XLA conv: jax.lax.conv_general_dilated forward, its input gradient, its kernel gradient, and all three
  together.

The header gives the backend's measured matmul peak (a square matmul, benchmarks/gpu_throughput.py's
matmul_peak) in the same run, to read the matmul column against. Figures only, no assertions (see
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

os.environ.setdefault("KERAS_BACKEND", "jax")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from harness.backend import backend_name, device_name, load_keras  # noqa: E402

load_keras()

# goodfellow2014's 5x5 convolutions at 54x54: input (height, width, channels) and filters (conv1: 48
# maxout units x 3 pieces)
LAYERS = {
    "conv1": ((54, 54, 3), 144), "conv2": ((27, 27, 48), 64), "conv3": ((27, 27, 64), 128),
    "conv4": ((14, 14, 128), 160), "conv5": ((14, 14, 160), 192), "conv6": ((7, 7, 192), 192),
    "conv7": ((7, 7, 192), 192), "conv8": ((4, 4, 192), 192),
}
KERNEL = (5, 5)


def best_ms(fn, args: tuple, steps: int) -> float:
    """Milliseconds of the jitted ``fn(*args)``: the best of ``steps`` calls after one compiling call."""
    import jax

    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def parts(shape: tuple[int, int, int], filters: int, batch: int, steps: int) -> dict[str, float]:
    """The figures of one convolution: milliseconds per part, and the matmul's FLOP/s."""
    import jax
    import jax.numpy as jnp

    from harness.models.layers import conv_patches

    rng = np.random.default_rng(0)
    height, width, channels = shape
    x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*KERNEL, channels, filters)) * 0.05, jnp.float32)
    dy = jnp.asarray(rng.normal(size=(batch, height, width, filters)), jnp.float32)

    def patches(x):
        return conv_patches(x, KERNEL, "same")

    def patch_conv(kernel, x):
        return patches(x) @ kernel.reshape(-1, filters)

    def xla_conv(kernel, x):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def gradient(conv, argnums):  # of <conv(kernel, x), dy>: the backward pass for output gradient dy
        return jax.grad(lambda kernel, x: jnp.sum(conv(kernel, x) * dy), argnums=argnums)

    gathered = jax.jit(patches)(x)
    out = {
        "patches": best_ms(patches, (x,), steps),
        "matmul": best_ms(lambda p, k: p @ k.reshape(-1, filters), (gathered, kernel), steps),
        "patch fwd+bwd": best_ms(gradient(patch_conv, (0, 1)), (kernel, x), steps),
        "XLA fwd": best_ms(xla_conv, (kernel, x), steps),
        "XLA d input": best_ms(gradient(xla_conv, 1), (kernel, x), steps),
        "XLA d kernel": best_ms(gradient(xla_conv, 0), (kernel, x), steps),
        "XLA fwd+bwd": best_ms(gradient(xla_conv, (0, 1)), (kernel, x), steps),
    }
    out["matmul GFLOP/s"] = 2 * batch * height * width * KERNEL[0] * KERNEL[1] * channels * filters / out["matmul"] / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed calls per figure, the best kept (default 4)")
    parser.add_argument("--layers", default=",".join(LAYERS),
                        help=f"comma-separated, from {', '.join(LAYERS)} (default: all)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.layers.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in LAYERS]
    if unknown or not chosen:
        parser.error(f"--layers: choose from {', '.join(LAYERS)}; got {args.layers!r}")
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be at least 1")
    if backend_name() != "jax":
        print(f"conv_parts: times XLA through JAX; KERAS_BACKEND is {backend_name()!r}: run it with "
              "KERAS_BACKEND=jax", file=sys.stderr)
        return 2

    from gpu_throughput import matmul_peak

    peak = matmul_peak("jax", "fp32", 2048, 0.3)
    print(f"conv_parts: backend {backend_name()} on {device_name()}; batch {args.batch}, fp32, best of {args.steps}; "
          f"Python {platform.python_version()}, {os.cpu_count()} logical cores; matmul peak {peak / 1e9:,.1f} GFLOP/s\n")
    columns = ["patches", "matmul", "matmul GFLOP/s", "patch fwd+bwd", "XLA fwd", "XLA d input", "XLA d kernel",
               "XLA fwd+bwd"]
    print("| layer | input | filters | " + " | ".join(c if "GFLOP" in c else f"{c} ms" for c in columns) + " |")
    print("|---|---|---:|" + "---:|" * len(columns))
    for name in chosen:
        shape, filters = LAYERS[name]
        figures = parts(shape, filters, args.batch, args.steps)
        print(f"| {name} | {'x'.join(map(str, shape))} | {filters} | "
              + " | ".join(f"{figures[c]:,.1f}" for c in columns) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
