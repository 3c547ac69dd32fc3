"""Wall time of the small CPU sweep, run as a user runs it: `harness sweep cpu_small_sweep`.

    python benchmarks/sweep_small.py [--workdir DIR] [--data DIR] [--set KEY=VALUE ...]

Runs the real CLI in a fresh working directory (random search, 6 trials of cnn_tiny/cnn_small on the
embedded synthetic data; dataset generation and preparation are inside the timed figure unless
--data points at a data folder an earlier run generated) and prints the wall time against the
15-minute floor, the trials, and whether they all landed as nested runs under one parent run.
`--set sweep.max_trials=2` runs a shorter version.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FLOOR_SECONDS = 15 * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument("--data", type=Path, help="reuse this data folder (linked as <workdir>/data)")
    parser.add_argument("--set", action="append", default=[], help="override passed to harness sweep")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.data is not None and not (work / "data").exists():
        (work / "data").symlink_to(args.data.resolve(), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KERASTUNER_"))}
    command = [sys.executable, "-m", "harness", "sweep", "cpu_small_sweep"]
    command += [a for item in args.set for a in ("--set", item)]
    loads, done = [], threading.Event()

    def sample_load() -> None:  # the machine's 1-minute load average every 10 s while the sweep runs
        while not done.wait(10):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=env)
    wall = time.perf_counter() - start
    done.set()
    loads = loads or [os.getloadavg()[0]]
    if result.returncode != 0:
        print(f"harness sweep failed with exit code {result.returncode}")
        return result.returncode

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("svhn-harness").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    nested = len(parents) == 1 and all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
    finished = [t for t in trials if t.info.status == "FINISHED"]
    expected = int(parents[0].data.params["sweep.max_trials"]) if parents else 0
    sweep_seconds = (parents[0].info.end_time - parents[0].info.start_time) / 1000 if parents else float("nan")
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"1-min load average during the run: mean {sum(loads) / len(loads):.1f}, max {max(loads):.1f}")
    print(f"workdir: {work}" + (f" (data reused from {args.data})" if args.data else ""))
    print(f"{'figure':<40}{'value':>12}{'floor':>12}")
    print(f"{'wall time (s)':<40}{wall:>12.1f}{FLOOR_SECONDS:>12}")
    print(f"{'  of which the sweep itself (s)':<40}{sweep_seconds:>12.1f}")
    print(f"{'trials finished / asked':<40}{f'{len(finished)}/{expected}':>12}")
    print(f"{'nested runs under one parent':<40}{str(nested):>12}")
    for trial in sorted(finished, key=lambda t: -t.data.metrics.get("best/val_sequence_accuracy", 0)):
        p, m = trial.data.params, trial.data.metrics
        print(f"  trial {trial.data.tags['harness.trial_id']}: {p['model.name']:<10} {p['augment.policy']:<7} "
              f"lr {float(p['train.learning_rate']):.2e}  val seq acc {m['best/val_sequence_accuracy']:.4f}  "
              f"{m['run/wall_seconds']:6.1f} s")
    ok = wall <= FLOOR_SECONDS and nested and len(finished) == expected == len(trials)
    print(f"floors met: {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
