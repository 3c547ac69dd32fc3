"""Training throughput with the harness's malloc setting (harness.backend.keep_freed_memory) against glibc's default.

    python benchmarks/allocator.py [--model report2016] [--batch 64] [--steps 10] [--warmup 3]
                                   [--rounds 2] [--policy report] [--jit auto]

glibc maps each block above 32 MiB afresh and unmaps it when freed, so a training step's large
activations and gradients are page-faulted in and zeroed at every step; the harness keeps freed
memory in the heap instead (Linux with glibc only). Each round trains the same model in two fresh
processes, one as the harness runs (the setting applied) and one with glibc's default (its
``GLIBC_TUNABLES`` malloc parameter given, which the harness leaves alone), alternating. Each child
times ``train_on_batch`` (forward, loss, backward, Adam update, the augmentation policy in training
mode) on random images held in memory, as benchmarks/model_throughput.py does, after ``--warmup``
untimed steps, and counts over the timed steps its minor page faults and its CPU time in the kernel
(getrusage); its peak resident memory is the whole process's. Printed: each setting's best round
and kept / default (above 1: the setting is faster here), measured in the same run. Figures only,
no assertions (see DESIGN.md, benchmarks/).
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

GLIBC_DEFAULT = "glibc.malloc.mmap_max=65536"  # glibc's own value: the harness then sets nothing


def child(args) -> dict:
    from harness.backend import keep_freed_memory, load_keras, set_random_seed

    keras = load_keras()  # applies keep_freed_memory unless GLIBC_TUNABLES names malloc
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
    return {"applied": keep_freed_memory(), "images_per_s": args.batch / seconds,
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / args.steps,
            "kernel_share": (after.ru_stime - before.ru_stime) / cpu if cpu else 0.0,
            "peak_mib": after.ru_maxrss / 1024}


def run_child(argv: list[str], default: bool) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if default:
        env["GLIBC_TUNABLES"] = GLIBC_DEFAULT
    done = subprocess.run([sys.executable, __file__, "--child", *argv], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"benchmarks/allocator.py: a child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from model_throughput import timing_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="report2016", help="registered variant (default report2016)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64, the recipe's)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both settings (default 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    timing_arguments(parser, policy="report")
    parser.set_defaults(steps=10, warmup=3)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        print("the setting applies only on Linux with glibc; nothing to compare here")
        return 0
    passed = list(argv if argv is not None else sys.argv[1:])
    print(f"{args.model}, batch {args.batch}, policy {args.policy}: {args.steps} timed training steps after "
          f"{args.warmup}, {args.rounds} rounds; {platform.python_version()}, {os.cpu_count()} logical cores",
          flush=True)
    results: dict[str, list[dict]] = {"kept (the harness)": [], "glibc default": []}
    for r in range(args.rounds):
        for label, default in (("kept (the harness)", False), ("glibc default", True)):
            figures = run_child(passed, default)
            if figures["applied"] == default:
                sys.exit(f"benchmarks/allocator.py: the setting was {'applied' if default else 'not applied'} "
                         f"in the '{label}' child")
            results[label].append(figures)
            print(f"  round {r + 1}, {label}: {figures['images_per_s']:.1f} images/s, "
                  f"{figures['faults_per_step']:,.0f} page faults/step", file=sys.stderr, flush=True)
    best = {label: max(rows, key=lambda f: f["images_per_s"]) for label, rows in results.items()}
    print("| malloc | train images/s (best round) | minor page faults/step | CPU time in the kernel | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for label, f in best.items():
        print(f"| {label} | {f['images_per_s']:.1f} | {f['faults_per_step']:,.0f} | {f['kernel_share']:.0%} | "
              f"{f['peak_mib']:,.0f} |")
    kept, default = best["kept (the harness)"], best["glibc default"]
    print(f"kept / default: training {kept['images_per_s'] / default['images_per_s']:.2f}x, "
          f"peak memory {kept['peak_mib'] / default['peak_mib']:.2f}x")
    if hasattr(os, "getloadavg"):  # other processes on the machine slow every figure down
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} logical cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
