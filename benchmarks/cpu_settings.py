"""Training throughput on a CPU with the harness's process settings (harness.backend) against each one turned off.

    python benchmarks/cpu_settings.py [--model report2016] [--batch 64] [--steps 10] [--warmup 3]
                                      [--rounds 2] [--policy report] [--jit auto]

Two settings are made before Keras is imported: glibc's malloc keeps the memory a training step frees
for the next (``keep_freed_memory``: without it every block above 32 MiB is mapped afresh, page-faulted
in and zeroed at every step; Linux with glibc only), and TensorFlow runs its oneDNN CPU kernels
(``fast_cpu_kernels``: TensorFlow's own default only on CPUs with AVX-512 VNNI or newer). Each round
trains the same model in fresh processes, alternating: as the harness runs, with glibc's default
malloc (its ``GLIBC_TUNABLES`` malloc parameter given, which the harness leaves alone), with
TensorFlow's default kernels choice (``TF_ENABLE_ONEDNN_OPTS=0`` given), and with neither setting. Each child times
``train_on_batch`` (forward, loss, backward, Adam update, the augmentation policy in training mode) on
random images held in memory, as benchmarks/model_throughput.py does, after ``--warmup`` untimed
steps, and counts over the timed steps its minor page faults and its CPU time in the kernel
(getrusage); its peak resident memory is the whole process's. Printed: each setting's best round
and the harness / setting ratio (above 1: the harness's settings are faster here), measured in the
same run. Figures only, no assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.backend import on_glibc  # noqa: E402  (no Keras until load_keras)

GLIBC = on_glibc()
HARNESS = "the harness's settings"
# label -> environment given to the child; glibc's own mmap_max value: the harness then sets nothing
SETTINGS = {HARNESS: {}, "glibc's default malloc": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"},
            "TensorFlow's default kernels": {"TF_ENABLE_ONEDNN_OPTS": "0"},
            "neither (both defaults)": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536", "TF_ENABLE_ONEDNN_OPTS": "0"}}


def child(args) -> dict:
    from harness.backend import keep_freed_memory, load_keras, set_random_seed

    keras = load_keras()  # makes both settings unless the environment says otherwise
    from model_throughput import batch, jit_choice, timed

    from harness.models.architectures import build_model, build_sizes
    from harness.models.heads import _sequence_loss_fn, keras_metrics

    sizes = build_sizes(args.model)
    set_random_seed(0)
    model = build_model(args.model, policy=args.policy, seed=0, **sizes)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=_sequence_loss_fn, metrics=keras_metrics(),
                  jit_compile=jit_choice(args.jit))
    x, y = batch(np.random.default_rng(0), args.batch, sizes["image_size"])
    step = lambda: model.train_on_batch(x, y)  # noqa: E731
    for _ in range(args.warmup):  # the first traces
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = timed(step, 0, args.steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"freed_memory_kept": keep_freed_memory(), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "images_per_s": args.batch / seconds,
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
            "kernel_share": (after.ru_stime - before.ru_stime) / cpu if cpu else 0.0,
            "peak_mib": after.ru_maxrss / 1024}


def run_child(argv: list[str], label: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "TF_ENABLE_ONEDNN_OPTS")}
    done = subprocess.run([sys.executable, __file__, "--child", *argv], env={**env, **SETTINGS[label]},
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"benchmarks/cpu_settings.py: the child '{label}' failed:\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    expected = (GLIBC and "GLIBC_TUNABLES" not in SETTINGS[label], SETTINGS[label].get("TF_ENABLE_ONEDNN_OPTS", "1"))
    if (figures["freed_memory_kept"], figures["onednn"]) != expected:
        sys.exit(f"benchmarks/cpu_settings.py: the child '{label}' ran with other settings: {figures}")
    return figures


def main(argv: list[str] | None = None) -> int:
    from model_throughput import print_load, timing_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="report2016", help="registered variant (default report2016)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64, the recipe's)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the settings (default 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    timing_arguments(parser, policy="report")
    parser.set_defaults(steps=10, warmup=3)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    passed = list(argv if argv is not None else sys.argv[1:])
    labels = [label for label in SETTINGS if GLIBC or "GLIBC_TUNABLES" not in SETTINGS[label]]
    print(f"{args.model}, batch {args.batch}, policy {args.policy}: {args.steps} timed training steps after "
          f"{args.warmup}, {args.rounds} rounds; {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} logical cores" + ("" if GLIBC else "; not glibc: no malloc setting here"), flush=True)
    results: dict[str, list[dict]] = {label: [] for label in labels}
    for r in range(args.rounds):
        for label in labels:
            figures = run_child(passed, label)
            results[label].append(figures)
            print(f"  round {r + 1}, {label}: {figures['images_per_s']:.1f} images/s, "
                  f"{figures['faults_per_step']:,.0f} page faults/step", file=sys.stderr, flush=True)
    best = {label: max(rows, key=lambda f: f["images_per_s"]) for label, rows in results.items()}
    ours = best[HARNESS]
    print("| settings | train images/s (best round) | harness / this | minor page faults/step "
          "| CPU time in the kernel | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, f in best.items():
        print(f"| {label} | {f['images_per_s']:.1f} | {ours['images_per_s'] / f['images_per_s']:.2f}x | "
              f"{f['faults_per_step']:,.0f} | {f['kernel_share']:.0%} | {f['peak_mib']:,.0f} |")
    print_load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
