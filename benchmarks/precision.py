"""Training throughput by precision (train.precision) on the current Keras backend.

    python benchmarks/precision.py [--model cnn_small] [--batch-size 64] [--steps 40] [--jit auto]
    KERAS_BACKEND=jax python benchmarks/precision.py

For each precision (fp32, bf16; --precisions to choose), builds and compiles the model exactly as
`harness train` does (harness.training.setup.build_for / compile_for, so jit_compile "auto" means what it
means there), trains one warm-up epoch of --steps batches (compilation), then times a second one on
the same random uint8 images held in memory: the model's own cost, not the data pipeline's.
Figures only, no assertions (see DESIGN.md, benchmarks/).
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
from harness.spec import load_spec  # noqa: E402
from harness.training import setup as training  # noqa: E402

keras = load_keras()


def images_per_second(model_name: str, precision: str, batch_size: int, steps: int, jit: str) -> float:
    spec = load_spec(None, [f"model.name={model_name}", f"train.precision={precision}",
                            f"train.batch_size={batch_size}", f"train.jit_compile={jit}"])
    set_random_seed(0)
    model = training.build_for(spec)
    training.compile_for(spec, model, steps)
    rng = np.random.default_rng(0)
    count = batch_size * steps
    images = rng.integers(0, 256, (count, spec.data.image_size, spec.data.image_size, 3), dtype=np.uint8)
    lengths = rng.integers(1, 4, (count, 1))
    digits = np.where(np.arange(5) < lengths, rng.integers(0, 10, (count, 5)), 10)
    targets = np.concatenate([lengths, digits], axis=1).astype("int32")
    model.fit(images, targets, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)  # compiles
    start = time.perf_counter()
    model.fit(images, targets, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--jit", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps, backend {backend_name()}, "
          f"jit_compile {args.jit} (= {training._jit(args.jit)}), {device_name()}, {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    base = None
    for precision in args.precisions:
        rate = images_per_second(args.model, precision, args.batch_size, args.steps, args.jit)
        base = base or rate
        print(f"  {precision:>4}: {rate:8.1f} images/s  ({rate / base:.2f}x {args.precisions[0]})", flush=True)


if __name__ == "__main__":
    main()
