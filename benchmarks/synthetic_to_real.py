"""Synthetic to real: does a model trained on synthetic street numbers read genuine SVHN ones?

    python benchmarks/synthetic_to_real.py --run RUN_ID [--images DIR] [--workdir DIR] [--epochs 20]
                                           [--learning-rate LR] [--heldout-fraction 0.25] [--seed 0]
                                           [--limit N] [--set KEY=VALUE ...]

Run it in the folder whose MLflow store holds the run (./mlflow.db, or MLFLOW_TRACKING_URI), e.g.
after `harness quickstart`. Source: the 2,000 genuine SVHN train images in
../shared/data/svhn-sample/train (--images: any folder in SVHN Format 1 layout). It

1. builds Format 1 folders in the work folder (links to the images + a labels.csv each): ``all``,
   ``finetune`` and ``heldout`` (--heldout-fraction of the images, chosen by a seeded hash of the file
   names; 500 of 2,000 by default);
2. evaluates the run's model zero-shot on ``all``, prepared as the run's spec prepares its data (image
   size, box expansion) by harness.data.prepare, scored by harness.evaluation.evaluate (and on ``heldout`` alone, to
   compare with the fine-tuned model on the same images);
3. fine-tunes it with `harness train` on a generated spec (``finetune.yaml`` in the work folder: the
   run's spec with data.name folders, train=finetune, test=heldout, train.init_from=RUN_ID, a quarter
   of its learning rate, --epochs epochs, then the --set overrides, e.g. --set augment.policy=full, or
   --set data.recombined=12000: numbers recombined from the fine-tuning images' own digits),
   logged to the same MLflow store as a normal run;
4. prints sequence, length and per-digit accuracy against the floors (zero-shot on all >= 50%,
   fine-tuned on heldout >= 80%), the fine-tuned model's also read with five test crops (as
   `harness evaluate --crops 5`: the centre and four more, log-probabilities averaged), the wall
   times and the machine.

The default work folder is a new temporary one, removed at the end (kept when the fine-tuning fails,
so that the same command with --workdir resumes it). --limit N uses a seeded subset of N images (a
quick check of the plumbing). Figures only, no assertions (see DESIGN.md, benchmarks/).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.errors import HarnessError  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "svhn-sample" / "train"
FLOORS = {"zero-shot": 0.50, "fine-tuned": 0.80}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, metavar="RUN_ID", help="MLflow run whose model to measure")
    parser.add_argument("--images", type=Path, default=SAMPLE,
                        help="a folder in SVHN Format 1 layout (default: ../shared/data/svhn-sample/train)")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one, removed after)")
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (default: 20)")
    parser.add_argument("--learning-rate", type=float,
                        help="fine-tuning learning rate (default: a quarter of the run's)")
    parser.add_argument("--heldout-fraction", type=float, default=0.25,
                        help="share of the images held out of fine-tuning (default: 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the finetune/heldout split (default: 0)")
    parser.add_argument("--limit", type=int, metavar="N", help="use a seeded subset of N images (a quick check)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the fine-tuning spec, e.g. --set model.options.dropout=0.1 "
                             "(repeatable; type-checked)")
    args = parser.parse_args()
    images = args.images.expanduser().resolve()
    if not images.is_dir():
        parser.exit(2, f"synthetic_to_real: no image folder at {images}; give --images DIR (a folder in SVHN "
                       "Format 1 layout: images + digitStruct.mat, a .json or labels.csv)\n")
    if not 0 < args.heldout_fraction < 1 or args.epochs < 1 or (args.limit is not None and args.limit < 4):
        parser.exit(2, "synthetic_to_real: need 0 < --heldout-fraction < 1, --epochs >= 1 and --limit >= 4\n")

    from harness.backend import quiet_environment

    quiet_environment()
    temporary = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="synthetic-to-real-")) if temporary else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    keep = False
    try:
        keep = measure(args, images, work)
    except HarnessError as exc:
        print(f"synthetic_to_real: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthetic_to_real: interrupted", file=sys.stderr)
        return 130
    finally:
        if temporary and not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(args, images: Path, work: Path) -> bool:
    """The whole measurement; returns True when the work folder should be kept (fine-tuning failed)."""
    from harness.spec import load_spec
    from harness.tracking import query
    from harness.tracking import store as tracking_store

    started = time.perf_counter()
    run = query.get_run(args.run)  # an error naming the store when it has no such run
    spec = load_spec(query.download_artifact(args.run, "spec.yaml"))
    say(f"run {args.run}: '{run.name}', {spec.model.name} trained on {spec.data.name} "
        f"(store {tracking_store.display_uri()})")

    say(f"[1/3] folders: {images} -> {work}")
    records = read_source(images)
    folders, names = build_folders(records, work, args.heldout_fraction, args.seed, args.limit)
    counts = {split: len(chosen) for split, chosen in names.items()}
    say(f"      all {counts['all']}, finetune {counts['finetune']}, heldout {counts['heldout']} images")

    epochs = args.epochs
    lr = args.learning_rate or spec.train.learning_rate / 4
    ft_spec = finetune_spec(spec, args.run, folders, work, epochs, lr, args.set)  # checked before any work
    epochs, lr = ft_spec.train.epochs, ft_spec.train.learning_rate  # as --set left them

    say("[2/3] zero-shot evaluation of the run's model on all of them")
    t0 = time.perf_counter()
    zero_all, zero_held = zero_shot(args.run, spec, folders["all"], set(names["heldout"]), work)
    zero_wall = time.perf_counter() - t0

    say(f"[3/3] fine-tuning with `harness train` ({epochs} epoch{'s' * (epochs != 1)}, learning rate {lr:g}"
        f"{''.join(', ' + item for item in args.set)}) in {work}")
    spec_file = work / "finetune.yaml"
    store = tracking_store.tracking_uri()
    shown = store if store.startswith("sqlite:") else tracking_store.display_uri()  # absolute, no credentials
    spec_file.write_text(f"# Generated by benchmarks/synthetic_to_real.py from run {args.run}.\n"
                         f"# Run:    MLFLOW_TRACKING_URI={shown} harness train finetune.yaml   (in this folder)\n"
                         + ft_spec.to_yaml())
    t0 = time.perf_counter()
    wall_clock = time.time()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    # its progress and results go to stderr with ours: stdout is the table alone
    result = subprocess.run([sys.executable, "-m", "harness", "train", spec_file.name], cwd=work, env=env,
                            stdout=sys.stderr)
    ft_wall = time.perf_counter() - t0
    if result.returncode != 0:
        print(f"synthetic_to_real: `harness train` failed (exit code {result.returncode}); work folder kept: "
              f"{work} (the same command with --workdir {work} resumes the fine-tuning)", file=sys.stderr)
        return True
    tuned = finetuned_run(ft_spec, args.run, wall_clock)
    t0 = time.perf_counter()
    crops = five_crops(ft_spec, work, tuned.run_id)
    crops_wall = time.perf_counter() - t0

    print_table(args, run, spec, images, counts, zero_all, zero_held, zero_wall, tuned, epochs, lr, ft_wall,
                crops, crops_wall, time.perf_counter() - started)
    return False


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- the folders

def read_source(images: Path) -> pd.DataFrame:
    from harness.data.records import read_records

    return read_records(images)


def build_folders(records: pd.DataFrame, work: Path, heldout_fraction: float, seed: int,
                  limit: int | None) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """``all``, ``finetune`` and ``heldout`` folders in Format 1 layout under ``work`` (links to the
    images and a labels.csv each) and the image names in each. The split is a seeded hash of the file
    names."""
    # salted: validation's own rule hashes "seed:name", and must cut across this split, not along it
    order = sorted(records.index, key=lambda i: hashlib.sha256(
        f"synthetic-to-real:{seed}:{records.at[i, 'name']}".encode()).digest())
    if limit is not None:
        order = order[:limit]
    held = max(1, round(len(order) * heldout_fraction))
    chosen = {"all": sorted(order), "heldout": sorted(order[:held]), "finetune": sorted(order[held:])}
    folders = {}
    for split, rows in chosen.items():
        folder = work / split
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        write_split(records.loc[rows], folder)
        folders[split] = folder
    return folders, {split: list(records.loc[rows, "name"]) for split, rows in chosen.items()}


def write_split(records: pd.DataFrame, folder: Path) -> None:
    rows = []
    for record in records.itertuples():
        target = folder / record.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(record.path)
        except OSError:  # no symbolic links here (some Windows setups): copy
            shutil.copy2(record.path, target)
        for digit, (left, top, width, height) in zip(record.digits, record.boxes):
            rows.append((record.name, int(digit) or 10, left, top, width, height))
    table = pd.DataFrame(rows, columns=["filename", "label", "left", "top", "width", "height"])
    table.to_csv(folder / "labels.csv", index=False, float_format="%g")


# ------------------------------------------------------------------------------------ zero-shot

def zero_shot(run_id: str, spec, folder: Path, heldout: set[str], work: Path) -> tuple[dict, dict]:
    """Metrics of the run's model on the images of ``folder`` and on the ``heldout`` ones among them,
    prepared as the run's data was."""
    from harness import MAX_DIGITS
    from harness.data.prepare import prepare_split
    from harness.data.records import read_records, scan_records

    data = spec.data
    skip = data.bad_files == "skip"
    records = scan_records(folder)[0] if skip else read_records(folder)
    if data.long_numbers == "drop":
        records = records[records["length"] <= MAX_DIGITS]
    path = work / "zero-shot" / f"all-{data.image_size}-{data.box_expand:g}.h5"
    prepare_split(records, path, image_size=data.image_size, box_expand=data.box_expand,
                  bad_files=data.bad_files, desc="prepare all")
    # the backend is loaded after preparation has forked its workers
    from harness.data.splitfile import PreparedSplit
    from harness.evaluation.evaluate import predict_logits
    from harness.evaluation.loading import run_model
    from harness.models.heads import evaluate_arrays

    split = PreparedSplit(path)
    targets, logits = split.targets(), predict_logits(run_model(run_id), path)
    mask = np.array([name in heldout for name in split.names()], dtype=bool)
    return evaluate_arrays(targets, logits), evaluate_arrays(targets[mask], logits[mask])


# ---------------------------------------------------------------------------------- fine-tuning

def finetune_spec(spec, run_id: str, folders: dict[str, Path], work: Path, epochs: int, lr: float,
                  overrides: list[str]):
    from harness.spec import load_spec, with_values

    tuned = with_values(spec, {
        "name": f"{spec.name}-real-finetune",
        "description": f"{spec.name} (run {run_id}) fine-tuned on genuine images "
                       f"(benchmarks/synthetic_to_real.py)",
        "data.name": "folders",
        "data.options": {"train": str(folders["finetune"]), "test": str(folders["heldout"])},
        "data.root": str(work / "data"),
        "train.init_from": run_id,
        "train.epochs": epochs,
        "train.learning_rate": lr,
        "train.target_accuracy": 0.0,  # a time-to-accuracy run's stop is not the fine-tuning's
    }, source="synthetic_to_real fine-tuning spec")
    if not overrides:
        return tuned
    base = work / "finetune-base.yaml"  # the --set overrides go through the spec's own parser and checks
    base.write_text(tuned.to_yaml())
    return load_spec(base, overrides)


def finetuned_run(ft_spec, run_id: str, since: float):
    """The fine-tuning run `harness train` just finished in the store."""
    from harness.tracking import query
    from harness.tracking import store as tracking_store

    found = [r for r in query.find_runs(experiment=ft_spec.tracking.experiment, history_keys=())
             if r.name == ft_spec.name and r.params.get("train.init_from") == run_id
             and r.status == "FINISHED" and (r.end_time or 0) >= since - 1]
    if not found:
        raise HarnessError(f"`harness train` finished, but {tracking_store.display_uri()} has no finished run "
                           f"'{ft_spec.name}' started from {run_id}")
    return found[-1]


def five_crops(ft_spec, work: Path, run_id: str) -> dict:
    """The fine-tuned model on the held-out split read with five test crops (`harness evaluate --crops 5`)."""
    from harness.data import datasets
    from harness.evaluation.evaluate import evaluate_model
    from harness.evaluation.loading import load_model, run_model

    heldout = datasets.prepare(ft_spec.data).splits()["test"]  # prepared by the fine-tuning: reused
    local = work / "runs" / run_id / "model.keras"
    return evaluate_model(load_model(local) if local.exists() else run_model(run_id), heldout, crops=5)


# ---------------------------------------------------------------------------------------- table

def print_table(args, run, spec, images: Path, counts: dict, zero_all: dict, zero_held: dict,
                zero_wall: float, tuned, epochs: int, lr: float, ft_wall: float, crops: dict, crops_wall: float,
                total: float) -> None:
    from harness.backend import backend_name, device_name
    from harness.data.prepare import usable_cores

    tuned_metrics = {k[len("test_"):]: v for k, v in tuned.metrics.items() if k.startswith("test_")}
    print()
    print(f"Synthetic to real: run {args.run} ('{run.name}', {spec.model.name} trained on {spec.data.name}), "
          f"{counts['all']} images from {images}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores "
          f"({usable_cores()} usable), Python {platform.python_version()}, Keras backend {backend_name()} "
          f"on {device_name()}")
    print(f"preparation as the run's spec: {spec.data.image_size}x{spec.data.image_size}, box expanded "
          f"{spec.data.box_expand:g}, model input {spec.augment.crop_size}x{spec.augment.crop_size}")
    head = f"{'':<40}{'images':>7}{'sequence':>10}{'length':>9}{'per digit':>11}{'floor':>7}{'met':>5}{'wall (s)':>10}"
    print(head)
    print("-" * len(head))
    rows = [("zero-shot, all", zero_all, FLOORS["zero-shot"], zero_wall),
            ("zero-shot, heldout", zero_held, None, None),
            (f"fine-tuned {epochs} ep. (lr {lr:g}), heldout", tuned_metrics, FLOORS["fine-tuned"], ft_wall),
            ("  the same read with 5 test crops", crops, FLOORS["fine-tuned"], crops_wall)]
    for label, m, floor, wall in rows:
        met = "-" if floor is None else ("yes" if m["sequence_accuracy"] >= floor else "no")
        print(f"{label:<40}{int(m['examples']):>7}{pct(m['sequence_accuracy']):>10}{pct(m['length_accuracy']):>9}"
              f"{pct(m['digit_accuracy']):>11}{'-' if floor is None else pct(floor, 0):>7}{met:>5}"
              f"{'-' if wall is None else f'{wall:.1f}':>10}")
    if args.set:
        print(f"fine-tuning overrides: {' '.join(args.set)}")
    print(f"fine-tuning run: {tuned.run_id} ('{tuned.name}'; training + evaluation "
          f"{tuned.metrics.get('wall_seconds', float('nan')):.1f} s of the {ft_wall:.1f} s wall), "
          f"store {_store()}")
    print(f"total wall: {total:.1f} s")


def pct(value: float, decimals: int = 2) -> str:
    return "n/a" if value != value else f"{100 * value:.{decimals}f}%"


def _store() -> str:
    from harness.tracking import store as tracking_store

    return tracking_store.display_uri()


if __name__ == "__main__":
    sys.exit(main())
