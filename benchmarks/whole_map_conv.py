"""Training and inference throughput of the models whose fully connected layers are written as convolutions,
with those convolutions as one matmul (harness.models.layers.WholeMapConv2D) against Keras' Conv2D.

    python benchmarks/whole_map_conv.py [--models report2016,stn_report2016] [--batch 64] [--steps 5]
                                        [--warmup 2] [--rounds 2] [--policy report] [--jit auto]

``report2016``'s fc_conv1 (4x4x192 -> 1x1x1024, a kernel spanning the whole map) and fc_conv2 (1x1 on a
1x1 map) are WholeMapConv2D layers: the same weights and outputs as Conv2D (tests/test_models.py), computed
as the flattened map x the reshaped kernel. For each model, the same build is timed with that matmul and
with Keras' own convolution (WholeMapConv2D told its kernel never spans the map), in alternating rounds,
each after ``--warmup`` untimed steps (the first traces), the best round of each kept: ``train_on_batch``
(forward, loss, backward, Adam update, the augmentation policy in training mode) and ``predict_on_batch``
images/s on random images held in memory, as benchmarks/model_throughput.py times them. Printed: both
figures and matmul / Conv2D (above 1: the matmul is faster here), measured in the same run; then the
milliseconds of one training step of fc_conv1 alone (behind a linear layer, so its input gradient is
computed as in the model) both ways. Figures only, no assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.backend import backend_name, device_name, load_keras, set_random_seed  # noqa: E402

keras = load_keras()

from model_throughput import batch, jit_choice, print_load, timed, timing_arguments  # noqa: E402

from harness.models.architectures import build_model, build_sizes  # noqa: E402
from harness.models.heads import _sequence_loss_fn, keras_metrics  # noqa: E402
from harness.models.layers import WholeMapConv2D  # noqa: E402

MODELS_WITH_WHOLE_MAP_CONVS = ("report2016", "stn_report2016")


@contextlib.contextmanager
def keras_convolution(plain: bool):
    """Within it (``plain``), WholeMapConv2D layers traced run Keras' Conv2D convolution instead of the matmul."""
    if not plain:
        yield
        return
    original = WholeMapConv2D._whole_map
    WholeMapConv2D._whole_map = lambda self, inputs: False
    try:
        yield
    finally:
        WholeMapConv2D._whole_map = original


def measure(name: str, plain: bool, args) -> tuple[float, float]:
    """Training and inference images/s of ``name`` at ``args.batch``, its whole-map convolutions as Keras'
    Conv2D (``plain``) or as one matmul."""
    sizes = build_sizes(name)
    with keras_convolution(plain):
        set_random_seed(0)
        model = build_model(name, policy=args.policy, seed=0, **sizes)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=_sequence_loss_fn, metrics=keras_metrics(),
                      jit_compile=jit_choice(args.jit))
        x, y = batch(np.random.default_rng(0), args.batch, sizes["image_size"])
        train = timed(lambda: model.train_on_batch(x, y), args.warmup, args.steps)
        infer = timed(lambda: model.predict_on_batch(x), args.warmup, args.steps)
    return args.batch / train, args.batch / infer


def layer_ms(plain: bool, args) -> float:
    """Milliseconds per training step of ``report2016``'s fc_conv1 alone (4x4x192 -> 1x1x1024, no bias) at
    ``args.batch``: forward, a mean-squared loss, the gradients for its input and kernel, an SGD update."""
    with keras_convolution(plain):
        set_random_seed(0)
        inputs = keras.Input((4, 4, 192))
        scaled = keras.layers.Dense(192, use_bias=False, name="scale")(inputs)  # gives the input a gradient
        outputs = WholeMapConv2D(1024, 4, padding="valid", use_bias=False)(scaled)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse", jit_compile=jit_choice(args.jit))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.batch, 4, 4, 192)).astype("float32")
        y = rng.normal(size=(args.batch, 1, 1, 1024)).astype("float32")
        return 1000 * timed(lambda: model.train_on_batch(x, y), args.warmup, args.steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda t: [n.strip() for n in t.split(",") if n.strip()],
                        default=["report2016"], help="comma-separated variants (default: report2016)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both; the best kept (default 2)")
    timing_arguments(parser, policy="report")
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in MODELS_WITH_WHOLE_MAP_CONVS:
            parser.error(f"--models: '{name}' has no whole-map convolution; choose from "
                         f"{', '.join(MODELS_WITH_WHOLE_MAP_CONVS)}")
    print(f"device: {device_name()}; backend: {backend_name()} (Keras {keras.__version__}); "
          f"jit: {jit_choice(args.jit)}; policy: {args.policy}; batch {args.batch}; {args.steps} timed steps "
          f"after {args.warmup}, best of {args.rounds} rounds; {platform.python_version()}, "
          f"{os.cpu_count()} logical cores", flush=True)
    lines = ["| model | train: Conv2D | train: matmul | train matmul / Conv2D "
             "| inference: Conv2D | inference: matmul | inference matmul / Conv2D |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in args.models:
        best = {True: [0.0, 0.0], False: [0.0, 0.0]}
        for round_ in range(args.rounds):
            for plain in (True, False):
                train, infer = measure(name, plain, args)
                best[plain] = [max(best[plain][0], train), max(best[plain][1], infer)]
                print(f"  {name} round {round_ + 1}, {'Conv2D' if plain else 'matmul'}: train {train:,.1f} "
                      f"images/s, inference {infer:,.1f} images/s", file=sys.stderr, flush=True)
        (conv_train, conv_infer), (mm_train, mm_infer) = best[True], best[False]
        lines.append(f"| `{name}` | {conv_train:,.1f} | {mm_train:,.1f} | {mm_train / conv_train:.2f}x "
                     f"| {conv_infer:,.1f} | {mm_infer:,.1f} | {mm_infer / conv_infer:.2f}x |")
    print("images/s:")
    print("\n".join(lines))
    conv_ms = min(layer_ms(True, args) for _ in range(args.rounds))
    mm_ms = min(layer_ms(False, args) for _ in range(args.rounds))
    print(f"fc_conv1 alone (4x4x192 -> 1024, forward and both gradients), ms per step at batch {args.batch}: "
          f"Conv2D {conv_ms:,.1f}, matmul {mm_ms:,.1f}: Conv2D / matmul {conv_ms / mm_ms:.1f}x")
    print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
