"""Training: a spec in, a tracked MLflow run and held-out metrics out.

Local state of a run lives in ``runs/<run_id>/``: the full training state (EpochCheckpoint: weights,
optimizer, random seed generators, running metrics, epoch and step; saved at every epoch's end and
every ``train.checkpoint_seconds`` within one) and the best weights by validation sequence accuracy.
``runs/pending/<spec key>.json`` points at an unfinished run of the same spec, so running the same
command again after a crash, a kill -9 or Ctrl-C continues that run (same MLflow run) from the step it
was saved at, with the same data order and random draws: the final weights are those of an
uninterrupted run. Keras' own BackupAndRestore cannot do this (it restarts the interrupted epoch), so
a resumed run first fits the rest of the interrupted epoch (EpochBatches from the saved step), then
the remaining epochs.

Also here: mixed precision (``train.precision``), data parallelism over several local accelerators
(``train.distribute``, :func:`placement`), fine-tuning from another model's weights
(``train.init_from``, :func:`init_weights`) and stopping once the validation sequence accuracy reaches
``train.target_accuracy`` (time to accuracy: benchmarks/time_to_accuracy.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import RUNS, atomic
from harness.backend import load_keras, set_random_seed
from harness.data import card as datacard
from harness.data import datasets
from harness.data.batches import SplitBatches
from harness.errors import DataError
from harness.evaluation import serving
from harness.evaluation.evaluate import evaluate_split, write_predictions
from harness.tracking import log, query, runs

keras = load_keras()

from harness.training.callbacks import (
    EpochLogger,
    EpochProgress,
    StopOnDivergence,
    StopOnInterrupt,
    logged_epochs,
)
from harness.training.checkpoint import EpochCheckpoint
from harness.training.setup import (
    _check_init_from,
    build_for,
    compile_for,
    init_weights,
    placement,
)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str
    test: dict
    model_path: Path
    wall_seconds: float


class EpochBatches(keras.utils.PyDataset):
    """The batches of a SplitBatches epoch from ``start`` on (the rest of an interrupted epoch), the
    last one cut to a multiple of ``multiple`` examples (so at most multiple - 1 examples are left out
    per epoch, different ones every epoch when shuffled). Epoch ends pass through to ``batches``, so
    the order still changes every epoch."""

    def __init__(self, batches: SplitBatches, start: int = 0, multiple: int = 1):
        super().__init__(workers=batches.workers, use_multiprocessing=batches.use_multiprocessing,
                         max_queue_size=batches.max_queue_size)
        self.batches, self.start, self.multiple = batches, start, multiple
        last = batches.num_examples - (len(batches) - 1) * batches.batch_size
        self._last = last - last % multiple  # examples kept from the last batch
        if start < 0 or len(self) < 1:
            raise ValueError(f"no batches from {start} on in an epoch of {len(batches)}")

    @property
    def num_examples(self) -> int:
        return (len(self.batches) - 1 - self.start) * self.batches.batch_size + self._last

    def __len__(self) -> int:
        return len(self.batches) - self.start - (self._last == 0)

    def __getitem__(self, index: int):
        images, targets = self.batches[self.start + index]
        keep = len(images) - len(images) % self.multiple
        return images[:keep], targets[:keep]

    def on_epoch_end(self) -> None:
        self.batches.on_epoch_end()


def spec_key(spec) -> str:
    return hashlib.sha256(spec.to_yaml().encode()).hexdigest()[:16]


def _pending_run(spec) -> str | None:
    marker = RUNS / "pending" / f"{spec_key(spec)}.json"
    if not marker.exists():
        return None
    run_id = json.loads(marker.read_text()).get("run_id")
    if run_id and query.run_status(run_id) in ("RUNNING", "FAILED", "KILLED") and (RUNS / run_id).is_dir():
        return run_id
    marker.unlink()  # finished elsewhere, or its local state is gone: start afresh
    return None


def train(spec, *, command: str | None = None, verbose: int | None = None) -> TrainResult:
    """Prepare the data, train, evaluate on the held-out split, and record it all in MLflow."""
    started = time.perf_counter()
    _check_init_from(spec.train.init_from)
    _say(f"[1/4] data: {spec.data.name} (generated or prepared once, then reused)")
    # Data first: preparation forks worker processes, which must happen before a multithreaded
    # backend (JAX) has started its threads.
    data = datasets.prepare(spec.data)
    set_random_seed(spec.train.seed)
    cache = spec.data.cache
    train_batches = SplitBatches(data.train, spec.train.batch_size, shuffle=True, seed=spec.train.seed,
                                 cache=cache)
    val_batches = (SplitBatches(data.val, spec.train.batch_size, shuffle=False, cache=cache)
                   if data.val else None)
    for name, batches in (("training", train_batches), ("validation", val_batches)):
        if batches is not None and batches.num_examples == 0:
            raise DataError(batches.path,
                            f"the {name} split is empty: nothing to train on (data.val_fraction "
                            f"{spec.data.val_fraction} of how many images the dataset has?)")
    where = placement(spec.train.distribute, spec.train.batch_size)
    with where.scope():
        model = build_for(spec, data.train)
        compile_for(spec, model, len(train_batches))
    resume = _pending_run(spec)
    with runs.run(spec, run_id=resume, command=command) as run_id:
        run_dir = RUNS / run_id
        marker = RUNS / "pending" / f"{spec_key(spec)}.json"
        atomic.write_json(marker, {"run_id": run_id, "spec": spec.name})
        summary = _data_summary(data)
        log.set_tags({"harness.dataset_fingerprint": log.dataset_fingerprint(
            {split: info["fingerprint"] for split, info in summary.items()})})
        if resume is None:
            log.log_params({"model.parameters": model.count_params()})
            _log_card(data.card, run_id)
        if resume is None and where.replicas > 1:
            log.set_tags({"harness.distribute": where.description})
        monitor = "val_sequence_accuracy" if val_batches else "sequence_accuracy"
        checkpoint = EpochCheckpoint(run_dir, monitor, seconds=spec.train.checkpoint_seconds,
                                     steps=spec.train.checkpoint_steps,
                                     patience=spec.train.early_stopping_patience,
                                     target=spec.train.target_accuracy)
        with where.scope():
            position = checkpoint.restore(model)
            if position is None and spec.train.init_from:
                init_weights(model, spec.train.init_from)
        epoch, step = position or (0, 0)
        # Logger before checkpoint, and epochs MLflow already has are not logged again: an epoch
        # re-run after a kill between the two is logged once.
        logger = EpochLogger(train_batches.num_examples, logged_epochs(run_id) if resume else ())
        guard = StopOnDivergence()  # first: a diverged step is neither logged nor checkpointed
        if where.multiple > 1 and val_batches is not None:
            val_batches = EpochBatches(val_batches, multiple=where.multiple)
        verbose = _verbosity(verbose)
        shown = EpochProgress(train_batches.num_examples, spec.train.batch_size)
        callbacks = [StopOnInterrupt(), guard, logger, checkpoint] + ([shown] if verbose == 2 else [])
        fit = functools.partial(model.fit, validation_data=val_batches, callbacks=callbacks,
                                verbose=verbose, shuffle=False)  # the order is SplitBatches'
        _say(f"[2/4] training {spec.model.name} ({model.count_params():,} parameters) on "
             f"{train_batches.num_examples} images, MLflow run {run_id}"
             + (f", resumed at epoch {epoch + 1} step {step}" if position else "")
             + (f", {where.description}" if where.replicas > 1 else ""))
        with where.scope():
            if step and not checkpoint.stopped:  # the rest of the interrupted epoch, in its order
                train_batches.epoch = epoch
                rest = EpochBatches(train_batches, start=step, multiple=where.multiple)
                logger.train_examples = shown.examples = rest.num_examples
                checkpoint.offset = guard.offset = step
                fit(rest, epochs=epoch + 1, initial_epoch=epoch)
                logger.train_examples = shown.examples = train_batches.num_examples
                epoch += 1
            if epoch < spec.train.epochs and not checkpoint.stopped:
                train_batches.epoch = epoch  # the data order continues where it stopped
                fit(EpochBatches(train_batches, multiple=where.multiple), epochs=spec.train.epochs,
                    initial_epoch=epoch)
            if checkpoint.best_path.exists():
                model.load_weights(str(checkpoint.best_path))
        if spec.train.target_accuracy:
            _log_target(checkpoint, started)
        _say("[3/4] evaluating on the held-out split")
        evaluation = evaluate_split(model, data.test, batch_size=max(spec.train.batch_size, 256))
        test = evaluation.metrics
        log.log_metrics({f"test_{k}": v for k, v in test.items()})
        for name, path in data.test_sets().items():  # the report's "resized only" set: test_resized_*
            if name != "test":
                extra = evaluate_split(model, path, batch_size=max(spec.train.batch_size, 256))
                log.log_metrics({f"{name}_{k}": v for k, v in extra.metrics.items()})
                for file in write_predictions(extra, path, run_dir / "predictions", name):
                    log.attach_file(run_id, file, "predictions")
        # per-example predictions and the worst errors' crops: reports rebuild from MLflow alone
        for path in write_predictions(evaluation, data.test, run_dir / "predictions", "test"):
            log.attach_file(run_id, path, "predictions")
        _say("[4/4] saving and logging the model")
        model_path = run_dir / "model.keras"
        model.save(str(model_path))
        if spec.tracking.log_model:
            serving.log_model(model_path, box_expand=spec.data.box_expand)
        wall = time.perf_counter() - started
        log.log_metrics({"wall_seconds": wall})
        marker.unlink(missing_ok=True)
    return TrainResult(run_id=run_id, test=test, model_path=model_path, wall_seconds=wall)


def _log_target(checkpoint: EpochCheckpoint, started: float) -> None:
    """Whether training stopped at train.target_accuracy: tag ``harness.target_reached`` (yes / no) and,
    when reached, metrics ``target_reached_epoch`` and ``target_reached_seconds`` (from the start of
    train() in the process that reached it, data preparation and validation included)."""
    log.set_tags({"harness.target_reached": "yes" if checkpoint.reached else "no"})
    if not checkpoint.reached:
        _say(f"target {checkpoint.monitor} >= {checkpoint.target} not reached")
        return
    metrics = {"target_reached_epoch": checkpoint.reached}
    if checkpoint.reached_at is not None:
        metrics["target_reached_seconds"] = checkpoint.reached_at - started
    log.log_metrics(metrics)
    _say(f"target {checkpoint.monitor} >= {checkpoint.target} reached at epoch {checkpoint.reached}: stopped")


def _data_summary(data: datasets.PreparedData) -> dict:
    from harness.data.prepare import open_prepared

    out = {}
    for split, path in data.splits().items():
        with open_prepared(path) as f:
            out[split] = {"path": str(path), **{k: _plain(v) for k, v in f.attrs.items()}}
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else (value.decode() if isinstance(value, bytes) else value)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _verbosity(verbose: int | None) -> int:
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, a line per epoch in logs


def _log_card(card_json: Path, run_id: str) -> None:
    """Log the prepared data's card.json and card.md to a run, as data_card.json and data_card.md."""
    log.log_dict(datacard.read_card(card_json), "data_card.json")
    markdown = card_json.with_name(datacard.CARD_MD)
    if markdown.is_file():
        with tempfile.TemporaryDirectory(prefix="harness-card-") as tmp:
            copy = Path(tmp) / "data_card.md"  # an artifact keeps its file's name
            shutil.copyfile(markdown, copy)
            log.attach_file(run_id, copy)
