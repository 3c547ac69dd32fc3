"""Exact resume: the full training state saved atomically at epoch ends and within epochs, and the
best weights by the monitored score.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from harness import MAX_DIGITS, atomic
from harness.backend import load_keras
from harness.errors import DataError, HarnessError, os_reason

keras = load_keras()


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
    (from 1) whose score first reached it, ``reached_seconds`` the run's :meth:`spent` at its end.

    The seconds the run has taken survive too: :meth:`spent` is this process's time since ``started``
    (time.perf_counter; default: now) plus what earlier attempts had taken at their last saved state.
    The work an interruption threw away (after the last save) is not counted: it is done again.
    """

    def __init__(self, run_dir: Path, monitor: str, *, seconds: float = 0.0, steps: int = 0,
                 patience: int = 0, target: float = 0.0, started: float | None = None):
        super().__init__()
        self.run_dir, self.monitor = Path(run_dir), monitor
        self.seconds, self.steps, self.patience, self.target = seconds, steps, patience, target
        self.reached, self.reached_seconds = 0, None
        self.started = time.perf_counter() if started is None else started
        self.earlier = 0.0  # seconds taken by earlier attempts, up to their last saved state
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
            raise DataError(reading, f"damaged training state, or one saved by a model built by other code "
                                     f"({type(exc).__name__}: {str(exc)[:200]}); "
                                     f"remove {self.run_dir} to start this run afresh") from None
        self.best, self.wait = best, state.get("wait", 0)
        self.stopped, self.reached = state.get("stopped", False), state.get("reached", 0)
        self._generation = state.get("generation", 0)
        self.earlier = float(state.get("seconds", 0.0))  # absent in a state saved before it was kept
        self._remove_other_generations()
        return state["epoch"], state.get("step", 0)

    def spent(self) -> float:
        """Seconds the run has taken: this attempt's so far and the earlier attempts' kept work."""
        return self.earlier + time.perf_counter() - self.started

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
            self.reached, self.reached_seconds = epoch + 1, self.spent()
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
        atomic.write_json(self.state_path, {
            "epoch": epoch, "step": step, "best": self.best, "wait": self.wait, "stopped": self.stopped,
            "reached": self.reached, "monitor": self.monitor, "generation": self._generation,
            "weights": f"{stem}.weights.h5", "extra": f"{stem}.npz", "seconds": self.spent(),
        })
        self._remove_other_generations()
        self._last_save, self._since = time.monotonic(), 0

    def _remove_other_generations(self) -> None:
        keep = {f"state-{self._generation}.weights.h5", f"state-{self._generation}.npz"}
        for path in self.run_dir.glob("state-*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


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
