"""The Keras callbacks every training run uses: Ctrl-C, divergence, the progress line, MLflow epoch logging."""

from __future__ import annotations

import sys
import time

from harness import interrupt
from harness.backend import load_keras
from harness.errors import HarnessError
from harness.progress import Progress
from harness.tracking import log, query

keras = load_keras()


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
    """Where there is no terminal for Keras' bar (logs, CI), the one display of training: a line on
    stderr within each epoch, at most every ``every`` seconds (the images trained on out of the
    epoch's ``examples`` and images/s, so that a long epoch is visibly alive), and at its end the
    epoch's losses and accuracies (Keras itself then prints nothing). ``epochs``, the run's schedule,
    is shown rather than the fit's: the rest of a resumed epoch is fitted on its own."""

    def __init__(self, examples: int, batch_size: int, every: float = 60.0, stream=None,
                 epochs: int | None = None):
        super().__init__()
        self.examples, self.batch_size, self.every, self.stream = examples, batch_size, every, stream
        self.epochs = epochs
        self.progress: Progress | None = None

    def _of(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.epochs or self.params['epochs']}"

    def on_epoch_begin(self, epoch, logs=None):
        self.progress = Progress(self.examples, self._of(epoch),
                                 every=self.every, stream=self.stream).__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is not None:  # the last batch may be short
            self.progress.update(min(self.batch_size, self.examples - self.progress.done))

    def on_epoch_end(self, epoch, logs=None):
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None
        shown = [f"{k} {float(v):.4f}" for k, v in (logs or {}).items()
                 if k in ("loss", "sequence_accuracy", "val_loss", "val_sequence_accuracy")]
        if shown:
            print(f"{self._of(epoch)}: {', '.join(shown)}", file=self.stream or sys.stderr, flush=True)


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


class EpochLogger(keras.callbacks.Callback):
    """Logs every epoch's training and validation metrics, training images/s and the learning rate to
    the active run; epochs in ``logged`` (already in MLflow: a resumed run) are not logged again."""

    def __init__(self, train_examples: int, logged=()):
        super().__init__()
        self.train_examples = train_examples
        self.logged = set(logged)
        self._start = 0.0
        self._train_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = 0.0

    def on_test_begin(self, logs=None):
        if self._start and not self._train_seconds:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.logged:
            return
        seconds = self._train_seconds or (time.perf_counter() - self._start)
        values = dict(logs or {})
        values["images_per_sec"] = self.train_examples / max(seconds, 1e-9)
        values["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        log.log_metrics(values, step=epoch + 1)


def logged_epochs(run_id: str) -> set[int]:
    """The epochs whose metrics MLflow already holds for ``run_id``."""
    return {step for step, _ in query.metric_history(run_id, "loss")}
