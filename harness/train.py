"""Training: a spec in, a tracked MLflow run and held-out metrics out.

Local state of a run lives in ``runs/<run_id>/``: Keras' BackupAndRestore state (weights, optimizer,
epoch) and the best weights by validation sequence accuracy. ``runs/pending/<spec key>.json`` points
at an unfinished run of the same spec, so running the same command again after a crash or Ctrl-C
continues that run (same MLflow run, from the last finished epoch) instead of starting over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from harness import atomic, backend, datasets, tracking
from harness.backend import load_keras
from harness.evaluate import evaluate_model
from harness.metrics import _sequence_loss_fn, keras_metrics
from harness.models import build_model
from harness.pipeline import SplitBatches

keras = load_keras()

RUNS = Path("runs")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str
    test: dict
    model_path: Path
    wall_seconds: float


def build_for(spec) -> keras.Model:
    return build_model(
        spec.model.name,
        image_size=spec.data.image_size,
        crop_size=spec.augment.crop_size,
        policy=spec.augment.policy,
        seed=spec.train.seed,
        options=spec.model.options,
        policy_options=spec.augment.options,
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
    # measured on a 2-core CPU with TensorFlow: XLA halves cnn_small's training throughput
    return not backend.device_name().startswith("CPU")


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
    _say(f"[1/4] data: {spec.data.name} (generated or prepared once, then reused)")
    # Data first: preparation forks worker processes, which must happen before a multithreaded
    # backend (JAX) has started its threads.
    data = datasets.prepare(spec.data)
    keras.utils.set_random_seed(spec.train.seed)
    train_batches = SplitBatches(data.train, spec.train.batch_size, shuffle=True, seed=spec.train.seed)
    val_batches = SplitBatches(data.val, spec.train.batch_size, shuffle=False) if data.val else None
    model = build_for(spec)
    compile_for(spec, model, len(train_batches))
    resume = _pending_run(spec)
    with tracking.run(spec, run_id=resume, command=command) as run_id:
        run_dir = RUNS / run_id
        marker = RUNS / "pending" / f"{spec_key(spec)}.json"
        _write_json(marker, {"run_id": run_id, "spec": spec.name})
        if resume is None:
            tracking.log_params({"model.parameters": model.count_params()})
            tracking.log_dict(_data_summary(data), "data_card.json")
        monitor = "val_sequence_accuracy" if val_batches else "sequence_accuracy"
        checkpoint = EpochCheckpoint(run_dir, monitor)
        initial_epoch = checkpoint.restore(model, train_batches)
        # The logger runs before the checkpoint: a kill between the two repeats an epoch's metrics at
        # the same step on resume, rather than leaving a gap.
        callbacks = [tracking.EpochLogger(train_batches.num_examples), checkpoint]
        if spec.train.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor=monitor, mode="max", patience=spec.train.early_stopping_patience))
        _say(f"[2/4] training {spec.model.name} ({model.count_params():,} parameters) on "
             f"{train_batches.num_examples} images, MLflow run {run_id}"
             + (f", resumed after epoch {initial_epoch}" if initial_epoch else ""))
        model.fit(train_batches, validation_data=val_batches, epochs=spec.train.epochs,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=_verbosity(verbose))
        if checkpoint.best_path.exists():
            model.load_weights(str(checkpoint.best_path))
        _say("[3/4] evaluating on the held-out split")
        test = evaluate_model(model, data.test, batch_size=max(spec.train.batch_size, 256))
        tracking.log_metrics({f"test_{k}": v for k, v in test.items()})
        _say("[4/4] saving and logging the model")
        model_path = run_dir / "model.keras"
        model.save(str(model_path))
        if spec.tracking.log_model:
            tracking.log_keras_model(model)
        wall = time.perf_counter() - started
        tracking.log_metrics({"wall_seconds": wall})
        marker.unlink(missing_ok=True)
    return TrainResult(run_id=run_id, test=test, model_path=model_path, wall_seconds=wall)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the latest state (weights with optimizer and RNG state, the epoch, the best
    score) and, when the monitored score improved, the best weights. Every file is written beside its
    final name and renamed into place, so a kill at any moment leaves the previous good files.
    """

    def __init__(self, run_dir: Path, monitor: str):
        super().__init__()
        self.run_dir, self.monitor = Path(run_dir), monitor
        self.latest_path = self.run_dir / "latest.weights.h5"
        self.best_path = self.run_dir / "best.weights.h5"
        self.state_path = self.run_dir / "state.json"
        self.best = -float("inf")

    def restore(self, model, train_batches) -> int:
        """Load the latest state if there is one; returns the epoch to start from."""
        if not (self.state_path.exists() and self.latest_path.exists()):
            return 0
        state = json.loads(self.state_path.read_text())
        model.optimizer.build(model.trainable_variables)  # optimizer slots must exist to be loaded
        model.load_weights(str(self.latest_path))
        self.best = state["best"]
        train_batches.epoch = state["epoch"]  # the data order continues where it stopped
        return state["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(self.monitor)
        if score is not None and score > self.best:
            self.best = float(score)
            _atomic_weights(self.model, self.best_path)
        _atomic_weights(self.model, self.latest_path)
        _write_json(self.state_path, {"epoch": epoch + 1, "best": self.best, "monitor": self.monitor})


def _atomic_weights(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.weights.h5")  # Keras insists on the .weights.h5 suffix
    model.save_weights(str(tmp))
    os.replace(tmp, path)


def _data_summary(data: datasets.PreparedData) -> dict:
    from harness.prepare import open_prepared

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
