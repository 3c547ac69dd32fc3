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

import contextlib
import dataclasses
import functools
import hashlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from harness import GOODFELLOW_2014, RUNS, atomic
from harness.backend import load_keras, set_random_seed
from harness.data import card as datacard
from harness.data import datasets
from harness.data.batches import SplitBatches
from harness.data.splitfile import PreparedSplit
from harness.errors import DataError
from harness.evaluation import serving
from harness.evaluation.evaluate import evaluate_split, write_predictions
from harness.evaluation.intervals import wilson
from harness.progress import say
from harness.tracking import log, model_registry, query, runs, store
from harness.training.callbacks import (
    EpochLogger,
    EpochProgress,
    StopOnDivergence,
    StopOnInterrupt,
    logged_epochs,
)
from harness.training.checkpoint import EpochCheckpoint
from harness.training.setup import (
    Placement,
    _check_init_from,
    build_for,
    compile_for,
    init_weights,
    placement,
)

keras = load_keras()


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str
    test: dict  # the test split's metrics
    model_path: Path  # the trained model's .keras file (in the run's local state)
    wall_seconds: float
    best: float | None = None  # the objective's best epoch value, and that epoch
    best_epoch: int = 0
    model_logged: bool = False


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The run around one :func:`fit`: how MLflow knows it and where its local state lives. The
    defaults make a fresh top-level run with its state in ``runs/<run id>/``."""

    run_id: str | None = None  # continue this MLflow run from its local state
    parent_run_id: str | None = None  # nest the run under this one (a sweep's trial)
    tags: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # set when the run is created
    resumed_tags: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # set when it is continued
    state_dir: Path | None = None  # the local training state (default runs/<run id>)
    objective: str = "val_sequence_accuracy"  # the epoch metric whose best epoch is kept
    direction: str = "max"
    log_model: Callable[[float | None], bool] | None = None  # given the best score: log the model?
    register: bool = True  # register the logged model as tracking.register says (a trial: no, the sweep does)
    pending: str | None = None  # a key: runs/pending/<key>.json names the run until it finishes
    command: str | None = None  # the command line, as the run's tag
    announce: bool = False  # the [n/4] stage lines on stderr


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


def _uses_ema(model) -> bool:
    optimizer = model.optimizer
    return bool(getattr(getattr(optimizer, "inner_optimizer", optimizer), "use_ema", False))


@contextlib.contextmanager
def _average_at_end_only(optimizer):
    """Keras puts the optimizer's average of the weights (train.ema_momentum) in the model at the end of
    every fit() call; a resumed epoch and the epochs after it are two calls, and training must go on from
    the raw weights in between. Inside, fit() leaves the weights as trained; :func:`fit` puts the
    average in once, after the last call."""
    optimizer.finalize_variable_values = lambda var_list: None  # this instance only, until the end
    try:
        yield
    finally:
        del optimizer.finalize_variable_values


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
    """`harness train`: prepare the data, then :func:`fit` in a run of its own, continuing the
    unfinished run of the same spec when there is one (``runs/pending/<spec key>.json``)."""
    started = time.perf_counter()
    _check_init_from(spec.train.init_from)
    say(f"[1/4] data: {spec.data.name} (generated or prepared once, then reused)")
    # Data first: preparation forks worker processes, which must happen before a multithreaded
    # backend (JAX) has started its threads.
    data = datasets.prepare(spec.data)
    if data.heldout:
        say(f"test: {data.heldout}")
    set_random_seed(spec.train.seed)
    plan = RunPlan(run_id=_pending_run(spec), pending=spec_key(spec), command=command, announce=True)
    return fit(spec, data, plan=plan, verbose=verbose, started=started)


def make_model(spec, train_path: Path | None, steps_per_epoch: int, where: Placement) -> keras.Model:
    """The spec's model, built and compiled in ``where``'s scope, as every run trains it."""
    with where.scope():
        model = build_for(spec, train_path)
        compile_for(spec, model, steps_per_epoch)
    return model


def batches_for(spec, data: datasets.PreparedData) -> tuple[SplitBatches, SplitBatches | None]:
    """The training and validation batches of ``data`` (a DataError when either split is empty)."""
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
    return train_batches, val_batches


def fit(spec, data: datasets.PreparedData, *, plan: RunPlan = RunPlan(), model=None,
        where: Placement | None = None, callbacks: Sequence = (), epochs: int | None = None,
        initial_epoch: int = 0, verbose: int | None = None, started: float | None = None) -> TrainResult:
    """Fit ``model`` (default: the spec's, built here) on prepared ``data`` inside an MLflow run.

    The one way the harness trains: every run, `harness train` or a sweep trial, gets the same record:
    the resolved spec as params, the code's and data's tags, the data card, per-epoch metrics, exact
    resume from its local state (``plan.state_dir``), placement and mixed precision, the best epoch's
    weights and ``best_<objective>`` / ``best_epoch``, the test split's metrics and per-example
    predictions, ``error.txt`` when it fails, ``wall_seconds`` (a resumed run's earlier attempts
    included) and (as ``plan.log_model`` decides) the logged model. ``callbacks`` (KerasTuner's, say)
    join the harness's own; ``epochs`` and ``initial_epoch`` (Hyperband's) override the spec's schedule.
    """
    started = time.perf_counter() if started is None else started
    train_batches, val_batches = batches_for(spec, data)
    where = where or placement(spec.train.distribute, spec.train.batch_size)
    if model is None:
        model = make_model(spec, data.train, len(train_batches), where)
    epochs = epochs or spec.train.epochs
    announce = say if plan.announce else (lambda message: None)
    resumed = plan.run_id is not None
    with runs.run(spec, run_id=plan.run_id, command=plan.command, parent_run_id=plan.parent_run_id,
                  tags=plan.tags) as run_id:
        state = plan.state_dir or RUNS / run_id
        marker = RUNS / "pending" / f"{plan.pending}.json" if plan.pending else None
        if marker is not None:
            atomic.write_json(marker, {"run_id": run_id, "spec": spec.name})
        summary = _data_summary(data)
        log.set_tags({"harness.dataset_fingerprint": log.dataset_fingerprint(
            {split: info["fingerprint"] for split, info in summary.items()})})
        if not resumed:
            log.log_params({"model.parameters": model.count_params()})
            if val_batches is not None:  # the validation figures' denominator (their intervals, noise marks)
                log.log_metrics({"val_examples": val_batches.num_examples})
            _log_card(data.card, run_id)  # data_card.json and data_card.md
            log.log_inputs(run_id, data_inputs(data, summary))
            if data.heldout:
                log.set_tags({"harness.test_heldout": data.heldout})
            if where.replicas > 1:
                log.set_tags({"harness.distribute": where.description})
        elif plan.resumed_tags:
            log.set_tags(plan.resumed_tags)
        # The checkpoint keeps the best weights by a score to maximise: for a loss, the accuracy.
        monitor = plan.objective if plan.direction == "max" else "val_sequence_accuracy"
        if val_batches is None:
            monitor = monitor.removeprefix("val_")
        checkpoint = EpochCheckpoint(state, monitor, seconds=spec.train.checkpoint_seconds,
                                     steps=spec.train.checkpoint_steps,
                                     patience=spec.train.early_stopping_patience,
                                     target=spec.train.target_accuracy, started=started)
        with where.scope():
            position = checkpoint.restore(model)
            if position is None and spec.train.init_from and not initial_epoch:
                donor = init_weights(model, spec.train.init_from)
                if donor:  # the run behind a models:/ alias, which may move on later
                    log.set_tags({"harness.init_from_run": donor})
        epoch, step = position or (0, 0)
        if initial_epoch > epoch:  # Hyperband continues an earlier trial's model from its epoch
            epoch, step = initial_epoch, 0
        # Logger before checkpoint, and epochs MLflow already has are not logged again: an epoch
        # re-run after a kill between the two is logged once.
        logger = EpochLogger(train_batches.num_examples, logged_epochs(run_id) if resumed else ())
        guard = StopOnDivergence()  # first: a diverged step is neither logged nor checkpointed
        if where.multiple > 1 and val_batches is not None:
            val_batches = EpochBatches(val_batches, multiple=where.multiple)
        verbose = _verbosity(verbose)
        shown = EpochProgress(train_batches.num_examples, spec.train.batch_size, epochs=epochs)
        every = [StopOnInterrupt(), guard, logger, checkpoint, *callbacks] + ([shown] if verbose == 2 else [])
        averaged = _uses_ema(model)
        if averaged and val_batches is not None:  # validation reads the averaged weights, training the raw ones
            every.append(keras.callbacks.SwapEMAWeights())
        fit_keras = functools.partial(model.fit, validation_data=val_batches, callbacks=every,
                                      verbose=1 if verbose == 1 else 0,  # in logs EpochProgress is the display
                                      shuffle=False)  # the order is SplitBatches'
        announce(f"[2/4] training {spec.model.name} ({model.count_params():,} parameters) on "
                 f"{train_batches.num_examples} images, MLflow run {run_id}"
                 + (f", resumed at epoch {epoch + 1} step {step}" if position else "")
                 + (f", {where.description}" if where.replicas > 1 else ""))
        try:
            with where.scope(), _average_at_end_only(model.optimizer) if averaged else contextlib.nullcontext():
                if step and not checkpoint.stopped:  # the rest of the interrupted epoch, in its order
                    train_batches.epoch = epoch
                    rest = EpochBatches(train_batches, start=step, multiple=where.multiple)
                    logger.train_examples = shown.examples = rest.num_examples
                    checkpoint.offset = guard.offset = step
                    fit_keras(rest, epochs=epoch + 1, initial_epoch=epoch)
                    logger.train_examples = shown.examples = train_batches.num_examples
                    epoch += 1
                if epoch < epochs and not checkpoint.stopped:
                    train_batches.epoch = epoch  # the data order continues where it stopped
                    fit_keras(EpochBatches(train_batches, multiple=where.multiple), epochs=epochs,
                              initial_epoch=epoch)
            with where.scope():
                if checkpoint.best_path.exists():  # with the optimizer's state, its average among it
                    model.load_weights(str(checkpoint.best_path))
                if averaged:  # the model keeps the average of its weights (train.ema_momentum)
                    model.optimizer.finalize_variable_values(model.trainable_weights)
        except Exception as exc:
            _log_traceback(exc)
            raise
        objective = plan.objective if val_batches is not None else plan.objective.removeprefix("val_")
        best, best_epoch = best_of(query.metric_history(run_id, objective), plan.direction)
        if best is not None:
            log.log_metrics({f"best_{objective}": best, "best_epoch": best_epoch})
        if spec.train.target_accuracy:
            _log_target(checkpoint)
        announce("[3/4] evaluating on the held-out split")
        test = _evaluate(spec, model, data, run_id, state)
        log.set_tags({"mlflow.note.content": describe(spec, test, train_batches.num_examples, best, objective,
                                                          heldout=data.heldout)})
        announce("[4/4] saving and logging the model")
        model_path = state / "model.keras"
        model.save(str(model_path))
        logged = spec.tracking.log_model and (plan.log_model is None or plan.log_model(best))
        if logged:
            serving.log_model(model_path, box_expand=spec.data.box_expand)
            log.set_tags({"harness.model": f"runs:/{run_id}/{serving.MODEL_NAME}"})
            if spec.tracking.register and plan.register:
                say(f"registered {model_registry.register(run_id, spec.tracking.register, spec.tracking.alias)}"
                    + (f" (alias {spec.tracking.alias})" if spec.tracking.alias else ""))
        wall = checkpoint.spent()  # earlier attempts' kept work included: a resumed run's whole time
        log.log_metrics({"wall_seconds": wall})
        if marker is not None:
            marker.unlink(missing_ok=True)
    return TrainResult(run_id=run_id, test=test, model_path=model_path, wall_seconds=wall, best=best,
                       best_epoch=best_epoch, model_logged=bool(logged))


def describe(spec, test: dict, train_images: int, best: float | None, objective: str,
             heldout: str | None = None) -> str:
    """The run's description in MLflow (its page's first lines): what was trained on what, and the
    headline result with its 95% interval, against Goodfellow et al. 2014 only when it is comparable
    (the test images are SVHN's)."""
    lines = [f"**{spec.name}**: model `{spec.model.name}`, augmentation `{spec.augment.policy}`, "
             f"{spec.train.epochs} epochs on {train_images:,} `{spec.data.name}` training images."]
    if test:
        n = int(test.get("examples", 0))
        right = round(test["sequence_accuracy"] * n)
        low, high = wilson(right, n)
        line = (f"Test sequence accuracy **{100 * test['sequence_accuracy']:.2f}%** of {n:,} numbers "
                f"(95% interval {100 * low:.1f}-{100 * high:.1f}%)")
        if spec.data.name == "svhn":
            line += (f", {100 * (test['sequence_accuracy'] - GOODFELLOW_2014):+.2f} points from Goodfellow et al. "
                     f"2014's {100 * GOODFELLOW_2014:.2f}% (SVHN's test set).")
        else:
            line += (f"; not SVHN's test set, so not comparable with Goodfellow et al. 2014's "
                     f"{100 * GOODFELLOW_2014:.2f}%.")
        lines.append(line)
    if heldout:
        lines.append(f"Test split: {heldout}.")
    if best is not None:
        lines.append(f"Best epoch's {objective}: {best:.4f}.")
    return "\n\n".join(lines)


def best_of(history, direction: str) -> tuple[float | None, int]:
    """The best value of a metric's (step, value) history and its step (the earliest of equals)."""
    by_step = dict(history)  # a repeated step (an epoch redone after a kill): its latest value
    if not by_step:
        return None, 0
    pick = max if direction == "max" else min
    step = pick(by_step, key=lambda s: (by_step[s], -s) if direction == "max" else (by_step[s], s))
    return by_step[step], step


def _evaluate(spec, model, data: datasets.PreparedData, run_id: str, state: Path) -> dict:
    """The test split's metrics (``test_*``) and those of the other test sets (the report's "resized
    only" set: ``test_resized_*``), with per-example predictions and the worst errors' crops as
    artifacts, so that reports rebuild from MLflow alone."""
    batch_size = max(spec.train.batch_size, 256)
    test = {}
    for name, path in sorted(data.test_sets().items(), key=lambda item: item[0] != "test"):
        evaluation = evaluate_split(model, path, batch_size=batch_size)
        log.log_metrics({f"{name}_{k}": v for k, v in evaluation.metrics.items()})
        for file in write_predictions(evaluation, path, state / "predictions", name):
            log.attach_file(run_id, file, "predictions")
        if name == "test":
            test = evaluation.metrics
    return test


def _log_traceback(exc: BaseException) -> None:
    """A failing run keeps the traceback as ``error.txt`` (one best-effort try: the error that fails
    the run is what the user must see, not a second one from logging it)."""
    if isinstance(exc, store.TrackingUnavailable):
        return
    try:
        with store.without_http_retries():
            log.log_text(traceback.format_exc(), "error.txt")
    except Exception:  # noqa: BLE001
        pass


def _log_target(checkpoint: EpochCheckpoint) -> None:
    """Whether training stopped at train.target_accuracy: tag ``harness.target_reached`` (yes / no) and,
    when reached, metrics ``target_reached_epoch`` and ``target_reached_seconds`` (the run's seconds at
    that epoch's end, as ``wall_seconds`` counts them: data preparation and validation included)."""
    log.set_tags({"harness.target_reached": "yes" if checkpoint.reached else "no"})
    if not checkpoint.reached:
        say(f"target {checkpoint.monitor} >= {checkpoint.target} not reached")
        return
    metrics = {"target_reached_epoch": checkpoint.reached}
    if checkpoint.reached_seconds is not None:
        metrics["target_reached_seconds"] = checkpoint.reached_seconds
    log.log_metrics(metrics)
    say(f"target {checkpoint.monitor} >= {checkpoint.target} reached at epoch {checkpoint.reached}: stopped")


def _data_summary(data: datasets.PreparedData) -> dict:
    return {split: {"path": str(path), **PreparedSplit(path).attrs} for split, path in data.splits().items()}


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


CONTEXTS = {"train": "training", "val": "validation"}  # every other split is a test set: "evaluation"


def data_inputs(data: datasets.PreparedData, summary: dict) -> list[log.DataInput]:
    """The run's splits as MLflow dataset inputs, named by dataset, options and split, with the
    split file's fingerprint as digest and its image and digit counts as profile."""
    card = datacard.read_card(data.card) if data.card is not None else {}
    settings = card.get("settings", {})
    options = settings.get("options") or {}
    what = str(card.get("dataset") or settings.get("name") or "data")
    if options:
        what += "{" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + "}"
    return [log.split_input(f"{what}/{split}", Path(info["path"]), CONTEXTS.get(split, "evaluation"), split)
            for split, info in summary.items()]
