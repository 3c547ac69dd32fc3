"""Time to write the report of a 50-trial sweep from MLflow alone.

    python benchmarks/report_speed.py [--trials 50] [--epochs 30] [--workdir DIR]

Builds a fresh SQLite MLflow store: one sweep parent and ``--trials`` nested trial runs, each with
what training logs (the resolved spec as params, per-epoch train and validation metrics for every
epoch, held-out metrics, tags, spec.yaml, data_card.json, and per-example predictions of an
SVHN-sized test set, 13,068 images, with the worst errors' crops). Then times `harness report
--sweep PARENT` twice: in this process (the report itself) and as the command a user runs (a new
process, imports included). Prints both against the 30 s floor; nothing here asserts a time.
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

import h5py
import numpy as np

TEST_EXAMPLES = 13_068  # images in SVHN Format 1's test split
KERAS_METRICS = ["loss", "sequence_accuracy", "length_accuracy"] + [f"digit{p}_accuracy" for p in range(1, 6)]


def build_store(work: Path, trials: int, epochs: int) -> str:
    """The sweep store under ``work``; returns the parent run id."""
    import mlflow
    from mlflow.entities import Metric, Param

    from harness import LENGTH_CLASSES
    from harness.evaluation.evaluate import Evaluation, example_table, write_predictions
    from harness.spec import load_spec

    client = mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("sweep-benchmark")
    rng = np.random.default_rng(0)

    # An SVHN-sized prepared test split (images left unwritten: HDF5 stores nothing for them).
    split = work / "test.h5"
    lengths = rng.choice([1, 2, 3, 4, 5], TEST_EXAMPLES, p=[0.2, 0.45, 0.3, 0.04, 0.01])
    digits = np.full((TEST_EXAMPLES, 5), 10, np.uint8)
    for i, length in enumerate(lengths):
        digits[i, :length] = rng.integers(0, 10, length)
    with h5py.File(split, "w") as f:
        f.create_dataset("images", (TEST_EXAMPLES, 64, 64, 3), dtype=np.uint8)
        f.create_dataset("length", data=lengths.astype(np.uint8))
        f.create_dataset("digits", data=digits)
        f.create_dataset("names", data=[f"{i + 1}.png" for i in range(TEST_EXAMPLES)], dtype=h5py.string_dtype())
        f.attrs.update(format_version=1, image_size=64, box_expand=0.3, count=TEST_EXAMPLES, fingerprint="0" * 64)
    targets = np.concatenate([lengths[:, None], digits], axis=1).astype(np.int32)

    # A few distinct prediction sets (noisier logits: a worse trial), shared out among the trials.
    prediction_sets = []
    for noise in (1.0, 1.6, 2.2, 2.8):
        logits = rng.normal(0, noise, (TEST_EXAMPLES, LENGTH_CLASSES + 50)).astype(np.float32)
        logits[np.arange(TEST_EXAMPLES), targets[:, 0]] += 6
        for p in range(5):
            present = targets[:, 0] > p
            logits[np.nonzero(present)[0], LENGTH_CLASSES + 10 * p + targets[present, 1 + p]] += 6
        table = example_table(targets, logits, [f"{i + 1}.png" for i in range(TEST_EXAMPLES)])
        prediction_sets.append(write_predictions(Evaluation({}, table), split, work / f"predictions{noise}", "test"))

    spec = load_spec(None)
    parent = client.create_run(experiment, run_name="lr-policy-sweep", tags={
        "harness.command": "harness sweep experiments/sweep.yaml"})
    client.log_param(parent.info.run_id, "tuner.objective", "val_sequence_accuracy")
    tags = {"harness.backend": "tensorflow", "harness.device": "GPU (NVIDIA H100)", "harness.python": "3.11.9",
            "mlflow.source.git.commit": "0" * 40, "harness.git_dirty": "false", "version.keras": "3.15.1",
            "version.tensorflow": "2.21.0", "version.mlflow": "3.17.2", "mlflow.parentRunId": parent.info.run_id,
            "harness.dataset_fingerprint": "1" * 64}
    card = {"dataset": "svhn", "settings": {}, "sources": {"test": {
                "annotated": TEST_EXAMPLES, "readable": TEST_EXAMPLES, "prepared": TEST_EXAMPLES, "anomalies": {}}},
            "prepared": {"test": {"file": "test.h5", "images": TEST_EXAMPLES, "image_size": 64, "from": ["test"],
                                  "fingerprint": "0" * 64}}}
    now = int(time.time() * 1000)
    for t in range(trials):
        lr = float(10 ** rng.uniform(-4.5, -2))
        policy = ["paper", "none", "report"][t % 3]
        batch = [32, 64, 128][(t // 3) % 3]
        params = {k: ("" if v is None else str(v)) for k, v in spec.flat().items()}
        params.update({"train.learning_rate": f"{lr:.3g}", "augment.policy": policy, "train.batch_size": str(batch),
                       "model.parameters": "980009", "train.epochs": str(epochs)})
        run = client.create_run(experiment, run_name=f"trial-{t:03d}",
                                tags={**tags, "harness.command": f"harness train sweep trial {t}"})
        run_id = run.info.run_id
        ceiling = 0.97 - 0.4 * abs(np.log10(lr) + 3.2) / 2 - rng.uniform(0, 0.05)
        rows = []
        for epoch in range(1, epochs + 1):
            progress = 1 - np.exp(-epoch / (epochs / 4))
            for name in KERAS_METRICS:
                value = (3.5 * (1 - progress) + 0.2) if name == "loss" else ceiling * progress
                rows.append(Metric(name, value + rng.normal(0, 0.01), now + epoch, epoch))
                rows.append(Metric(f"val_{name}", value + rng.normal(0, 0.015), now + epoch, epoch))
            rows.append(Metric("images_per_sec", rng.normal(2400, 100), now + epoch, epoch))
            rows.append(Metric("learning_rate", lr * (1 - progress), now + epoch, epoch))
        held_out = {"sequence_accuracy": ceiling, "length_accuracy": ceiling + 0.02, "digit_accuracy": ceiling + 0.015,
                    "coverage_at_98": max(0.0, 2 * ceiling - 1.1), "examples": TEST_EXAMPLES,
                    **{f"digit{p}_accuracy": ceiling + 0.02 - 0.01 * p for p in range(1, 6)}}
        rows += [Metric(f"test_{k}", v, now + epochs + 1, 0) for k, v in held_out.items()]
        rows.append(Metric("wall_seconds", epochs * 35.0, now + epochs + 1, 0))
        for start in range(0, len(rows), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=rows[start:start + 1000],
                             params=[Param(k, v) for k, v in params.items()] if start == 0 else [])
        client.log_text(run_id, spec.to_yaml(), "spec.yaml")
        client.log_dict(run_id, card, "data_card.json")
        for path in prediction_sets[t % len(prediction_sets)]:
            client.log_artifact(run_id, str(path), "predictions")
        client.set_terminated(run_id)
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workdir", type=Path, help="working directory (default: a new temporary one)")
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="report-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"

    start = time.perf_counter()
    parent = build_store(work, args.trials, args.epochs)
    print(f"store: {args.trials} trials x {args.epochs} epochs built in {time.perf_counter() - start:.0f} s "
          f"under {work}")

    from harness.reporting.report import generate_report

    start = time.perf_counter()
    path = generate_report(sweep=parent, out=work / "reports" / "in-process")
    in_process = time.perf_counter() - start

    command = [sys.executable, "-m", "harness", "report", "--sweep", parent, "--out", "reports/cli"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    cli = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stderr[-3000:])
        return result.returncode
    figures = sorted(p.name for p in (path.parent / "figures").iterdir())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"report of a {args.trials}-trial sweep: {in_process:.1f} s in process, {cli:.1f} s as "
          f"`harness report --sweep` (a new process, imports included); floor 30 s")
    print(f"figures: {', '.join(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
