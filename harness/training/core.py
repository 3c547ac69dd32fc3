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
import io
import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from harness import atomic, backend, interrupt
from harness.data import card as datacard
from harness.data import datasets
from harness.tracking import runs as tracking
from harness import MAX_DIGITS
from harness.backend import load_keras, set_random_seed
from harness.errors import DataError, HarnessError, os_reason
from harness.evaluation.evaluate import evaluate_split, write_predictions
from harness.models.heads import _sequence_loss_fn, keras_metrics
from harness.models.architectures import build_model
from harness.data.batches import SplitBatches
from harness.progress import Progress

keras = load_keras()

RUNS = Path("runs")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str
    test: dict
    model_path: Path
    wall_seconds: float


def build_for(spec, train_path: Path | None = None) -> keras.Model:
    """The spec's model, in its precision. ``train_path``: the prepared training split, whose colour statistics the
    PCA colour policies use (computed once, cached beside it); without it they use SVHN's."""
    from harness.models import augment

    stats = None
    if train_path is not None and augment.uses_colour_stats(spec.augment.policy):
        stats = augment.colour_pca(train_path)
    with _dtype_policy(spec.train.precision):
        return build_model(
            spec.model.name,
            image_size=spec.data.image_size,
            crop_size=spec.augment.crop_size,
            policy=spec.augment.policy,
            seed=spec.train.seed,
            options=spec.model.options,
            policy_options=spec.augment.options,
            colour_stats=stats,
        )


def compile_for(spec, model, steps_per_epoch: int) -> None:
    """Compile ``model`` with the spec's optimizer, schedule, loss, metrics and jit setting."""
    model.compile(
        optimizer=_optimizer(spec.train, steps_per_epoch),
        loss=_sequence_loss_fn,
        metrics=keras_metrics(),
        jit_compile=_jit(spec.train.jit_compile),
    )


def _optimizer(train_spec, steps_per_epoch: int):
    lr = train_spec.learning_rate
    if train_spec.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(train_spec.epochs * steps_per_epoch, 1))
    decay = train_spec.weight_decay or None
    if train_spec.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=train_spec.momentum, nesterov=True, weight_decay=decay)
    return keras.optimizers.AdamW(lr, weight_decay=decay) if decay else keras.optimizers.Adam(lr)


def _jit(choice: str) -> bool:
    if choice != "auto":
        return choice == "on"
    if backend.backend_name() == "jax":
        return True  # without jit JAX runs op by op: measured 8x slower than jitted on a 2-core CPU
    # measured on a 2-core CPU with TensorFlow: XLA halves cnn_small's training throughput
    return not backend.device_name().startswith("CPU")


PRECISION_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Layers built inside use the precision's Keras dtype policy: float32 variables, computations in
    bf16/fp16. Keras wraps the optimizer of a mixed_float16 model in a LossScaleOptimizer itself."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISION_POLICIES[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where training runs: ``scope()`` wraps building, compiling and fitting; ``multiple``: every
    batch's size must divide by it (JAX shards each batch evenly over its devices)."""

    scope: Callable[[], contextlib.AbstractContextManager]
    replicas: int = 1
    multiple: int = 1
    description: str = "one device"


def placement(choice: str, batch_size: int) -> Placement:
    """Data parallelism over all local accelerators when there are several (``choice`` "auto"), with
    the backend's own API: tf.distribute.MirroredStrategy on TensorFlow, keras.distribution.DataParallel
    on JAX. One device, "off", or the torch backend: a no-op. The global batch stays ``batch_size``."""
    name = backend.backend_name()
    if choice == "off" or name not in ("jax", "tensorflow"):
        return Placement(contextlib.nullcontext)
    if name == "jax":
        devices = keras.distribution.list_devices()
        if len(devices) < 2:
            return Placement(contextlib.nullcontext)
        if batch_size % len(devices):
            raise HarnessError(f"train.batch_size ({batch_size}) must be a multiple of the {len(devices)} devices "
                               "data parallelism splits each batch over (or set train.distribute=off)")
        distribution = keras.distribution.DataParallel(devices=devices)
        return Placement(distribution.scope, len(devices), len(devices),
                         f"keras.distribution.DataParallel over {len(devices)} {devices[0].split(':')[0]} devices")
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) < 2:
        return Placement(contextlib.nullcontext)
    strategy = tf.distribute.MirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    return Placement(strategy.scope, replicas, 1, f"tf.distribute.MirroredStrategy over {replicas} GPUs")


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


def init_weights(model, source: str) -> None:
    """Copy every weight of ``model`` from ``source`` (an MLflow run id or a .keras file), matched by
    path, for fine-tuning; the optimizer starts afresh. Every weight must be there with its shape."""
    from harness.evaluation.evaluate import load_model

    if source.endswith(".keras"):
        donor = load_model(source)
    else:
        local = RUNS / source / "model.keras"  # trained on this machine: no download needed
        donor = load_model(local) if local.exists() else tracking.load_keras_model(source)
    have = {v.path: v for v in donor.weights}
    for variable in model.weights:
        found = have.get(variable.path)
        if found is None or tuple(found.shape) != tuple(variable.shape):
            shape = "missing" if found is None else f"shape {tuple(found.shape)}"
            raise HarnessError(f"train.init_from {source}: weight '{variable.path}' {tuple(variable.shape)} is "
                               f"{shape} there; the model must be the same variant with the same options")
        variable.assign(keras.ops.convert_to_numpy(found))


def _check_init_from(source: str) -> None:
    """Fail before any work when the fine-tuning source is not there."""
    if source and not source.endswith(".keras") and not (RUNS / source / "model.keras").exists():
        if tracking.run_status(source) is None:
            raise HarnessError(f"train.init_from: no MLflow run '{source}' in {tracking.display_uri()} "
                               "(nor runs/<id>/model.keras here)")


def spec_key(spec) -> str:
    return hashlib.sha256(spec.to_yaml().encode()).hexdigest()[:16]


def _write_json(path: Path, data: dict) -> None:
    atomic.write_text(path, json.dumps(data, indent=2))


def _pending_run(spec) -> str | None:
    marker = RUNS / "pending" / f"{spec_key(spec)}.json"
    if not marker.exists():
        return None
    run_id = json.loads(marker.read_text()).get("run_id")
    if run_id and tracking.run_status(run_id) in ("RUNNING", "FAILED", "KILLED") and (RUNS / run_id).is_dir():
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
    with tracking.run(spec, run_id=resume, command=command) as run_id:
        run_dir = RUNS / run_id
        marker = RUNS / "pending" / f"{spec_key(spec)}.json"
        _write_json(marker, {"run_id": run_id, "spec": spec.name})
        summary = _data_summary(data)
        tracking.set_tags({"harness.dataset_fingerprint": tracking.dataset_fingerprint(
            {split: info["fingerprint"] for split, info in summary.items()})})
        if resume is None:
            tracking.log_params({"model.parameters": model.count_params()})
            datacard.log_card(data.card, run_id)  # data_card.json and data_card.md
        if resume is None and where.replicas > 1:
            tracking.set_tags({"harness.distribute": where.description})
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
        logger = _EpochLogger(train_batches.num_examples, _logged_epochs(run_id) if resume else ())
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
        tracking.log_metrics({f"test_{k}": v for k, v in test.items()})
        for name, path in data.test_sets().items():  # the report's "resized only" set: test_resized_*
            if name != "test":
                extra = evaluate_split(model, path, batch_size=max(spec.train.batch_size, 256))
                tracking.log_metrics({f"{name}_{k}": v for k, v in extra.metrics.items()})
                for file in write_predictions(extra, path, run_dir / "predictions", name):
                    tracking.attach_file(run_id, file, "predictions")
        # per-example predictions and the worst errors' crops: reports rebuild from MLflow alone
        for path in write_predictions(evaluation, data.test, run_dir / "predictions", "test"):
            tracking.attach_file(run_id, path, "predictions")
        _say("[4/4] saving and logging the model")
        model_path = run_dir / "model.keras"
        model.save(str(model_path))
        if spec.tracking.log_model:
            tracking.log_model(model_path, box_expand=spec.data.box_expand)
        wall = time.perf_counter() - started
        tracking.log_metrics({"wall_seconds": wall})
        marker.unlink(missing_ok=True)
    return TrainResult(run_id=run_id, test=test, model_path=model_path, wall_seconds=wall)


class TrainingDiverged(HarnessError):
    """The training loss became NaN, infinite or absurd at ``epoch`` (from 1), after ``step`` batches of it."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"training diverged: the loss is {loss:.4g} at epoch {epoch}, step {step}; the run is "
                         "marked FAILED and its last checkpoint (before that step) is kept. Lower "
                         "train.learning_rate, say: a changed spec starts a new run")


class StopOnInterrupt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the next batch or epoch boundary after a Ctrl-C, even one that library
    code swallowed (see harness.interrupt)."""

    def on_train_batch_end(self, batch, logs=None):
        interrupt.raise_if_requested()

    def on_test_batch_end(self, batch, logs=None):
        interrupt.raise_if_requested()

    def on_epoch_begin(self, epoch, logs=None):
        interrupt.raise_if_requested()

    def on_epoch_end(self, epoch, logs=None):
        interrupt.raise_if_requested()


class EpochProgress(keras.callbacks.Callback):
    """Where Keras prints a line per epoch and no bar (logs, CI), a line on stderr within each epoch
    too, at most every ``every`` seconds: the images trained on out of the epoch's ``examples`` and
    images/s, so that a long epoch is visibly alive."""

    def __init__(self, examples: int, batch_size: int, every: float = 60.0, stream=None):
        super().__init__()
        self.examples, self.batch_size, self.every, self.stream = examples, batch_size, every, stream
        self.progress: Progress | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.progress = Progress(self.examples, f"epoch {epoch + 1}/{self.params['epochs']}",
                                 every=self.every, stream=self.stream).__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is not None:  # the last batch may be short
            self.progress.update(min(self.batch_size, self.examples - self.progress.done))

    def on_epoch_end(self, epoch, logs=None):
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None


# A loss no training that still learns reaches: a softmax head's cross-entropy this large means logits
# that far apart, confidently wrong (a fresh model's loss is about ln 7 + 5 ln 10 = 13.5)
DIVERGED_LOSS = 1e6


class StopOnDivergence(keras.callbacks.Callback):
    """Raises TrainingDiverged at the end of the first training step whose loss is NaN, infinite or over
    DIVERGED_LOSS (weights blown up by too large a learning rate can leave the loss huge yet finite).

    Keras' running loss is the mean over the epoch so far, so it turns NaN (or infinite) at the very
    step that did. ``offset``: steps of the current epoch done before this fit (a resumed epoch).
    """

    def __init__(self):
        super().__init__()
        self.offset, self._epoch = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not abs(loss) <= DIVERGED_LOSS:  # NaN fails every comparison
            raise TrainingDiverged(self._epoch + 1, self.offset + batch + 1, loss)

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0


class EpochCheckpoint(keras.callbacks.Callback):
    """The full training state, so that a killed run resumes exactly where it was.

    Saved after every epoch, and within an epoch every ``seconds`` (time since the last save) and every
    ``steps`` training steps (0 turns either off): the weights with the optimizer state (its iteration
    count too), the states of the random seed generators (augmentation, dropout), the training
    metrics' running totals, the epoch and the step within it, the best score and the early-stopping
    count. ``state.json`` is written last and names the files of its generation, so a kill at any
    moment leaves the previous complete state; older generations are removed after it. The best
    weights by the monitored score go to ``best.weights.h5``.

    Also the early stopping (``patience`` epochs without a better score; 0 = off), whose count then
    survives a resume as well, and the stop at a ``target`` score (0 = off): ``reached`` is the epoch
    (from 1) whose score first reached it, ``reached_at`` its end (time.perf_counter, this process).
    """

    def __init__(self, run_dir: Path, monitor: str, *, seconds: float = 0.0, steps: int = 0,
                 patience: int = 0, target: float = 0.0):
        super().__init__()
        self.run_dir, self.monitor = Path(run_dir), monitor
        self.seconds, self.steps, self.patience, self.target = seconds, steps, patience, target
        self.reached, self.reached_at = 0, None
        self.best_path = self.run_dir / "best.weights.h5"
        self.state_path = self.run_dir / "state.json"
        self.best, self.wait, self.stopped = -float("inf"), 0, False
        self.offset = 0  # steps of the current epoch done before this fit (a resumed epoch)
        self._generation, self._epoch = 0, 0
        self._metrics = None  # running metric totals to put back when the resumed epoch begins
        self._last_save, self._since = time.monotonic(), 0

    def restore(self, model) -> tuple[int, int] | None:
        """Load the saved state if there is one: (epoch, steps done in it), else None. A damaged state
        file (a failing disk, a partial copy of runs/) is a DataError naming it."""
        if not self.state_path.exists():
            return None
        reading = self.state_path
        try:
            state = json.loads(self.state_path.read_text())
            weights = self.run_dir / state.get("weights", "latest.weights.h5")
            if not weights.exists():
                return None
            model.optimizer.build(model.trainable_variables)  # optimizer slots must exist to be loaded
            reading = weights
            model.load_weights(str(weights))
            if state.get("extra"):
                reading = self.run_dir / state["extra"]
                with np.load(reading, allow_pickle=False) as extra:
                    _assign(_seed_states(model), [extra[f"seed{i}"] for i in range(int(extra["seeds"]))], "seed")
                    if state.get("step"):
                        self._metrics = [extra[f"metric{i}"] for i in range(int(extra["metrics"]))]
                        _build_metrics(model)
            reading = self.state_path
            best = float(state["best"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
            raise DataError(reading, f"damaged training state ({type(exc).__name__}: {str(exc)[:200]}); "
                                     f"remove {self.run_dir} to start this run afresh") from None
        self.best, self.wait = best, state.get("wait", 0)
        self.stopped, self.reached = state.get("stopped", False), state.get("reached", 0)
        self._generation = state.get("generation", 0)
        self._remove_other_generations()
        return state["epoch"], state.get("step", 0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._metrics is not None:  # after fit reset them: the resumed epoch's totals so far
            _assign(self.model.metrics_variables, self._metrics, "metric")
            self._metrics = None

    def on_train_batch_end(self, batch, logs=None):
        # Nothing here touches self.model unless saving: on JAX that would copy the state back
        # from the devices after every step.
        self._since += 1
        if batch + 1 >= self.params["steps"]:
            return  # the epoch's end saves it
        due = (self.steps and self._since >= self.steps) or (
            self.seconds and time.monotonic() - self._last_save >= self.seconds)
        if due:
            self._save(self._epoch, self.offset + batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(self.monitor)
        if score is not None and score > self.best:
            self.best, self.wait = float(score), 0
            _atomic_weights(self.model, self.best_path)
        elif score is not None:
            self.wait += 1
        if self.patience and self.wait >= self.patience:
            self.stopped = self.model.stop_training = True
        if self.target and score is not None and score >= self.target and not self.reached:
            self.reached, self.reached_at = epoch + 1, time.perf_counter()
            self.stopped = self.model.stop_training = True
        self.offset = 0
        self._save(epoch + 1, 0)

    def _save(self, epoch: int, step: int) -> None:
        """A new generation of files, then state.json naming it: a failed write (disk full) raises
        DataError and leaves the previous generation in use."""
        model = self.model
        self._generation += 1
        stem = f"state-{self._generation}"
        _atomic_weights(model, self.run_dir / f"{stem}.weights.h5")
        arrays = {f"seed{i}": _numpy(v) for i, v in enumerate(_seed_states(model))}
        metrics = model.metrics_variables if step else []
        arrays.update({f"metric{i}": _numpy(v) for i, v in enumerate(metrics)})
        buffer = io.BytesIO()
        np.savez(buffer, seeds=len(arrays) - len(metrics), metrics=len(metrics), **arrays)
        atomic.write_bytes(self.run_dir / f"{stem}.npz", buffer.getvalue())
        _write_json(self.state_path, {
            "epoch": epoch, "step": step, "best": self.best, "wait": self.wait, "stopped": self.stopped,
            "reached": self.reached, "monitor": self.monitor, "generation": self._generation,
            "weights": f"{stem}.weights.h5", "extra": f"{stem}.npz",
        })
        self._remove_other_generations()
        self._last_save, self._since = time.monotonic(), 0

    def _remove_other_generations(self) -> None:
        keep = {f"state-{self._generation}.weights.h5", f"state-{self._generation}.npz"}
        for path in self.run_dir.glob("state-*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _log_target(checkpoint: EpochCheckpoint, started: float) -> None:
    """Whether training stopped at train.target_accuracy: tag ``harness.target_reached`` (yes / no) and,
    when reached, metrics ``target_reached_epoch`` and ``target_reached_seconds`` (from the start of
    train() in the process that reached it, data preparation and validation included)."""
    tracking.set_tags({"harness.target_reached": "yes" if checkpoint.reached else "no"})
    if not checkpoint.reached:
        _say(f"target {checkpoint.monitor} >= {checkpoint.target} not reached")
        return
    metrics = {"target_reached_epoch": checkpoint.reached}
    if checkpoint.reached_at is not None:
        metrics["target_reached_seconds"] = checkpoint.reached_at - started
    tracking.log_metrics(metrics)
    _say(f"target {checkpoint.monitor} >= {checkpoint.target} reached at epoch {checkpoint.reached}: stopped")


def _build_metrics(model) -> None:
    """Create the compiled metrics' variables now (TensorFlow creates them when it first traces the
    training step), so that the saved totals can be put back before that. fit resets what this adds."""
    targets = np.zeros((1, 1 + MAX_DIGITS), dtype="int32")
    model.compute_metrics(None, targets, np.zeros((1, *model.output_shape[1:]), dtype="float32"))


def _seed_states(model) -> list:
    """The random seed generators' state variables (augmentation, dropout): in model.variables, not
    in model.weights, so save_weights leaves them out."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _numpy(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _assign(variables, values, what: str) -> None:
    if len(variables) != len(values):
        raise HarnessError(f"saved training state has {len(values)} {what} variables, the model "
                           f"{len(variables)}: it was saved by a different model")
    for variable, value in zip(variables, values):
        variable.assign(value)


class _EpochLogger(tracking.EpochLogger):
    """tracking.EpochLogger, less the epochs in ``logged`` (already in MLflow)."""

    def __init__(self, train_examples: int, logged=()):
        super().__init__(train_examples)
        self.logged = set(logged)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 not in self.logged:
            super().on_epoch_end(epoch, logs)


def _logged_epochs(run_id: str) -> set[int]:
    return {step for step, _ in tracking.metric_history(run_id, "loss")}


def _atomic_weights(model, path: Path) -> None:
    """The weights written beside ``path``, then renamed into place; a failed write raises DataError
    naming ``path`` and leaves the previous file and no temporary one."""
    tmp = path.with_name(f".{path.stem}.tmp.weights.h5")  # Keras insists on the .weights.h5 suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.check_room(path, _weights_size_bound(model))
        model.save_weights(str(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # h5py reports some failed writes as RuntimeError
            raise DataError(path, f"cannot write it ({os_reason(exc)}); the previous one is kept") from None
        raise


def _weights_size_bound(model) -> int:
    """More than ``model.save_weights`` writes: the weights, the optimizer's variables, HDF5's structures."""
    optimizer = getattr(model, "optimizer", None)
    variables = [*model.weights, *(optimizer.variables if optimizer is not None else [])]
    values = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)
    return values + 4096 * len(variables) + 64 * 1024


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
