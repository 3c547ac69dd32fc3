"""Training and inference throughput of every registered model variant on the machine at hand.

    python benchmarks/model_throughput.py [--models cnn_tiny,cnn_small] [--batch-sizes 32,256]
                                          [--steps 5] [--warmup 2] [--policy paper] [--jit auto]

For each variant (harness.models.architectures.MODELS, at its build sizes) and batch size: images/s of a training
step (``train_on_batch``: forward, loss, backward, Adam update, the training metrics, with the
augmentation policy in training mode) and of inference (``predict_on_batch``), each timed over
``--steps`` steps after ``--warmup`` untimed ones (the first compiles). Inputs are random uint8
images and valid targets held in memory, so this is the model's cost, not the data pipeline's (see
benchmarks/pipeline_throughput.py). Each step returns its results to the host, so the timing is
synchronous on accelerators too.

The table also gives the parameter count and the analytic FLOPs per image (harness.models.flops, inference;
a training step is about 3x), and the achieved GFLOP/s. ``--jit auto`` is the harness's training
default (XLA on accelerators and always on JAX; not with TensorFlow or PyTorch on a CPU). Figures
only, no assertions (see DESIGN.md, benchmarks/).
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

from harness.models.architectures import MODELS, build_model, build_sizes  # noqa: E402
from harness.models.flops import model_flops  # noqa: E402
from harness.models.heads import _sequence_loss_fn, keras_metrics  # noqa: E402


def batch(rng: np.random.Generator, size: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images and valid targets: lengths 1-4, digits 0-9 up to the length, 10 beyond."""
    images = rng.integers(0, 256, (size, image_size, image_size, 3), dtype=np.uint8)
    length = rng.integers(1, 5, size)
    digits = np.where(np.arange(5)[None, :] < length[:, None], rng.integers(0, 10, (size, 5)), 10)
    return images, np.concatenate([length[:, None], digits], axis=1).astype(np.int32)


def timed(step, warmup: int, steps: int) -> float:
    """Seconds per step, after ``warmup`` untimed steps."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def print_load() -> None:
    """The load average at the end of a run: other processes on the machine slow every figure down."""
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} logical cores")


def jit_choice(choice: str) -> bool:
    from harness.training.setup import _jit

    return _jit(choice)  # the harness's rule: auto = XLA on accelerators and on JAX, not on a CPU otherwise


def measure(name: str, batch_sizes: list[int], args) -> list[dict]:
    sizes = build_sizes(name)
    set_random_seed(0)
    model = build_model(name, policy=args.policy, seed=0, **sizes)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=_sequence_loss_fn, metrics=keras_metrics(),
                  jit_compile=jit_choice(args.jit))
    flops = model_flops(model)
    rng = np.random.default_rng(0)
    rows = []
    for size in batch_sizes:
        x, y = batch(rng, size, sizes["image_size"])
        train = timed(lambda: model.train_on_batch(x, y), args.warmup, args.steps)
        infer = timed(lambda: model.predict_on_batch(x), args.warmup, args.steps)
        rows.append({"model": name, "parameters": model.count_params(), "mflops": flops / 1e6, "batch": size,
                     "train": size / train, "infer": size / infer,
                     "train_gflops": 3 * flops * size / train / 1e9, "infer_gflops": flops * size / infer / 1e9})
        print(f"  {name} batch {size}: train {size / train:,.1f} images/s, inference {size / infer:,.1f} images/s",
              file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | parameters | MFLOPs/image | batch | train images/s | inference images/s "
             "| train GFLOP/s | inference GFLOP/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['parameters']:,} | {r['mflops']:,.1f} | {r['batch']} | "
                     f"{r['train']:,.1f} | {r['infer']:,.1f} | {r['train_gflops']:,.2f} | {r['infer_gflops']:,.2f} |")
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        try:
            MODELS.get(n)
        except KeyError as exc:  # the registry's message suggests close matches
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def timing_arguments(parser: argparse.ArgumentParser, policy: str) -> None:
    """--steps, --warmup, --policy and --jit, as the throughput benchmarks take them."""
    parser.add_argument("--steps", type=int, default=5, help="timed steps per figure (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first; the first compiles (default 2)")
    parser.add_argument("--policy", default=policy, help=f"augmentation policy in the model (default: {policy})")
    parser.add_argument("--jit", choices=["auto", "on", "off"], default="auto",
                        help="XLA compilation (default auto: harness.training.setup's rule)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_names, default=MODELS.list(),
                        help="comma-separated variants (default: all registered)")
    parser.add_argument("--batch-sizes", type=lambda t: [int(v) for v in t.split(",")], default=[32, 256])
    timing_arguments(parser, policy="paper")
    args = parser.parse_args(argv)
    print(f"device: {device_name()}; backend: {backend_name()} (Keras {keras.__version__}); "
          f"jit: {jit_choice(args.jit)}; policy: {args.policy}; {args.steps} timed steps after {args.warmup}; "
          f"{platform.python_version()}, {os.cpu_count()} logical cores", flush=True)
    rows = []
    for name in args.models:
        rows += measure(name, args.batch_sizes, args)
    print(table(rows))
    print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
