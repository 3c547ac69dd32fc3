"""Time to accuracy: train with `harness train`'s own machinery until the validation sequence accuracy
reaches a target; report the wall time, the images seen and the per-epoch curve.

    python benchmarks/time_to_accuracy.py [--dataset synthetic|mnist_composite|svhn] [--target 0.95]
                                          [--model goodfellow2014] [--max-epochs 30] [--spec FILE]
                                          [--set train.batch_size=256 ...] [--json OUT.json]

The spec is ``--spec`` (a file or an experiments/ name), else experiments/<model>_<dataset>.yaml when
there is one, else the defaults with that model and dataset; then train.epochs = --max-epochs,
train.target_accuracy = --target (defaults: 98% on mnist_composite, 95% on synthetic, 96% on svhn)
and the --set overrides. Training stops at the end of the first epoch whose validation sequence
accuracy reaches the target, and the run is an ordinary MLflow run (MLFLOW_TRACKING_URI, else
./mlflow.db) with the tag ``harness.target_reached`` and the metrics ``target_reached_epoch`` and
``target_reached_seconds``. svhn needs `harness data fetch svhn` first.

Reported: data preparation time (done first, apart; `harness train` then reuses the files), time to
target (from the start of training to the end of the epoch that reached it: model building,
compilation and validation included), training time to target (the epochs' training parts only, from
MLflow's images_per_sec), images seen, the whole run's wall time (with the held-out evaluation and
model logging), and the curve. The cosine schedule decays over train.epochs, so --max-epochs changes
the learning rate every epoch sees: compare times at the same --max-epochs. Figures only, no
assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backend import backend_name, device_name  # noqa: E402
from harness.cli import _resolve_spec, experiments_dir  # noqa: E402
from harness.data import datasets
from harness.data.splitfile import PreparedSplit  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.spec import load_spec  # noqa: E402
from harness.tracking import query
from harness.training.core import train  # noqa: E402

TARGETS = {"mnist_composite": 0.98, "synthetic": 0.95, "svhn": 0.96}


def spec_for(args):
    """The spec this benchmark trains: the chosen file (or the defaults), then its own settings, then
    --set; the target defaults to the dataset's."""
    if args.spec:
        path, chosen = _resolve_spec(args.spec), []
    else:
        candidate = experiments_dir() / f"{args.model}_{args.dataset}.yaml"
        path = candidate if candidate.exists() else None
        chosen = [f"data.name={args.dataset}", f"model.name={args.model}"]
        if path is None:
            chosen.append(f"name={args.model}_{args.dataset}")
    overrides = [*chosen, f"train.epochs={args.max_epochs}", *args.set]
    target = args.target
    if target is None:
        name = load_spec(path, overrides).data.name
        if name not in TARGETS:
            raise HarnessError(f"no default target for dataset '{name}'; give --target")
        target = TARGETS[name]
    return load_spec(path, [*overrides, f"train.target_accuracy={target}"]), path


def curve(run, train_examples: int) -> list[dict]:
    """Per epoch: loss, training and validation sequence accuracy, images/s, cumulative training time
    and images seen."""
    history = {key: dict(values) for key, values in run.history.items()}
    rows, seconds = [], 0.0
    for epoch in sorted(history.get("loss", {})):
        rate = history.get("images_per_sec", {}).get(epoch)
        seconds += train_examples / rate if rate else 0.0
        rows.append({"epoch": epoch, "loss": history["loss"][epoch],
                     "sequence_accuracy": history.get("sequence_accuracy", {}).get(epoch),
                     "val_sequence_accuracy": history.get("val_sequence_accuracy", {}).get(epoch),
                     "images_per_sec": rate, "train_seconds": seconds, "images_seen": epoch * train_examples})
    return rows


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(TARGETS), default="synthetic",
                        help="default synthetic (embedded, offline)")
    parser.add_argument("--target", type=float, help="validation sequence accuracy to reach (default: per dataset)")
    parser.add_argument("--model", default="goodfellow2014", help="a registered model (default goodfellow2014)")
    parser.add_argument("--max-epochs", type=int, default=30, help="stop here if the target is not reached")
    parser.add_argument("--spec", help="train this spec file instead (its data and model; --dataset, --model unused)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides")
    parser.add_argument("--json", type=Path, help="also write the figures and the curve here")
    args = parser.parse_args(argv)
    if args.target is not None and not 0 < args.target <= 1:
        parser.error(f"--target must be in (0, 1], got {args.target}")
    command = "python benchmarks/time_to_accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        spec, path = spec_for(args)
        started = time.perf_counter()
        data = datasets.prepare(spec.data)
        preparation = time.perf_counter() - started
        result = train(spec, command=command)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started - preparation
    run = query.get_run(result.run_id)
    examples = PreparedSplit(data.train).count
    rows = curve(run, examples)
    reached = int(run.metrics["target_reached_epoch"]) if "target_reached_epoch" in run.metrics else None
    to_target = next((r for r in rows if r["epoch"] == reached), None)
    summary = {
        "spec": str(path) if path else "defaults", "name": spec.name, "model": spec.model.name,
        "dataset": spec.data.name, "target": spec.train.target_accuracy, "max_epochs": spec.train.epochs,
        "batch_size": spec.train.batch_size, "precision": spec.train.precision, "backend": backend_name(),
        "device": device_name(), "run_id": result.run_id, "train_examples": examples,
        "preparation_seconds": preparation, "reached_epoch": reached,
        "seconds_to_target": run.metrics.get("target_reached_seconds"),
        "train_seconds_to_target": to_target["train_seconds"] if to_target else None,
        "images_to_target": to_target["images_seen"] if to_target else None,
        "run_wall_seconds": wall, "test_sequence_accuracy": result.test["sequence_accuracy"],
        "load_average": os.getloadavg()[0], "curve": rows,
    }
    cpu = " (CPU figures)" if summary["device"].startswith("CPU") else ""
    print(f"\n{spec.name}: {spec.model.name} on {spec.data.name} ({examples} training images), target "
          f"{100 * spec.train.target_accuracy:g}% validation sequence accuracy, at most {spec.train.epochs} epochs, batch "
          f"{spec.train.batch_size}, {spec.train.precision}; {summary['backend']} on {summary['device']}{cpu}; "
          f"MLflow run {result.run_id}")
    print(f"data preparation: {preparation:.1f} s (apart)")
    if reached:
        seconds = summary["seconds_to_target"]
        print(f"target reached at epoch {reached}: {seconds:.1f} s to target "
              f"({to_target['train_seconds']:.1f} s of it training), {to_target['images_seen']:,} images seen")
    else:
        print(f"target NOT reached in {len(rows)} epochs (best validation sequence accuracy "
              f"{_pct(max((r['val_sequence_accuracy'] or 0) for r in rows) if rows else None)})")
    print(f"whole run: {wall:.1f} s (with the held-out evaluation and model logging); test sequence accuracy "
          f"{_pct(summary['test_sequence_accuracy'])}\n")
    print("| epoch | loss | train seq. acc. | val seq. acc. | images/s | training s (cum.) | images seen |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['epoch']} | {r['loss']:.4f} | {_pct(r['sequence_accuracy'])} | {_pct(r['val_sequence_accuracy'])} | "
              f"{r['images_per_sec'] or 0:,.1f} | {r['train_seconds']:,.1f} | {r['images_seen']:,} |")
    print(f"load average at the end: {summary['load_average']:.1f} (1 min), {os.cpu_count()} logical cores")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
