"""Wall time and held-out accuracy of `harness quickstart`, run as a user runs it.

    python benchmarks/quickstart.py [--workdir DIR] [--set KEY=VALUE ...]

Runs the real CLI in a fresh working directory (nothing reused: dataset generation, preparation,
training, evaluation, MLflow logging and the report are all inside the timed figure) and prints the
wall time against the 10-minute floor and the sequence accuracy against the 85% floor.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument("--set", action="append", default=[], help="spec override passed to quickstart")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quickstart-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    command = [sys.executable, "-m", "harness", "quickstart"] + [a for s in args.set for a in ("--set", s)]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        print(f"quickstart failed with exit code {result.returncode}")
        return result.returncode

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("svhn-harness").experiment_id],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    m = run.data.metrics
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"workdir: {work}")
    print(f"{'figure':<34}{'value':>12}{'floor':>12}")
    print(f"{'wall time (s)':<34}{wall:>12.1f}{600:>12}")
    print(f"{'  of which data+train+eval (s)':<34}{m.get('run/wall_seconds', float('nan')):>12.1f}")
    print(f"{'held-out sequence accuracy':<34}{m['test/sequence_accuracy']:>12.4f}{0.85:>12}")
    print(f"{'held-out length accuracy':<34}{m['test/length_accuracy']:>12.4f}")
    print(f"{'held-out per-digit accuracy':<34}{m['test/digit_accuracy']:>12.4f}")
    print(f"{'held-out examples':<34}{int(m['test/examples']):>12}")
    print(f"{'last epoch train images/s':<34}{m.get('train/images_per_sec', float('nan')):>12.1f}")
    ok = wall <= 600 and m["test/sequence_accuracy"] >= 0.85
    print(f"floors met: {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
